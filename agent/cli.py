"""The ``peering`` command line: one Typer app, each verb a thin shell over a module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="peering",
    help="Cluster peering for service catalogs, carried over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("dev-broker")
def dev_broker(
    port: Annotated[int, typer.Option(help="client port on 127.0.0.1")] = 9092,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="KRaft log dir; reused on restart")
    ] = Path(".dev-broker"),
    heap: Annotated[str, typer.Option(help="JVM max heap")] = "512m",
) -> None:
    """Run a local Apache Kafka (KRaft, one node) in the foreground until Ctrl-C/SIGTERM."""
    from agent.devbroker import run_foreground

    raise typer.Exit(run_foreground(port=port, data_dir=data_dir, heap=heap))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="leave everything running at the end")] = False,
) -> None:
    """Start a local broker and show a record going through it."""
    from agent.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def main() -> None:
    app()
