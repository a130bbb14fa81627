"""What every ``peering`` verb shares: output format, the agent address option, errors."""

from __future__ import annotations

import enum
import json
from typing import Annotated, NoReturn

import typer


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


HttpAddrOption = Annotated[
    str | None,
    typer.Option(
        "--http-addr",
        envvar="PEERING_HTTP_ADDR",
        help="agent HTTP address (default 127.0.0.1:8500)",
        show_envvar=True,
    ),
]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="table for people, json for scripts")
]


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 1: no stack traces for user errors."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))
