"""Peering verbs of the ``peering`` CLI: generate-token, establish, list, read, delete,
rotate-keys. Each one is a thin shell over one call of the agent's peering HTTP API.

Errors are one line on stderr and exit code 1, as for every verb (agent.cli_common).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from agent.cli_common import FormatOption, HttpAddrOption, OutputFormat, fail, print_json
from agent.client import AgentClient, ClientError
from agent.names import InvalidName, validate_peer_name

NameOption = Annotated[str, typer.Option("--name", help="peer name (the remote cluster's alias)")]
MetaOption = Annotated[
    list[str] | None, typer.Option("--meta", help="KEY=VALUE stored with the peering (repeatable)")
]


def _peer_name(value: str) -> str:
    try:
        return validate_peer_name(value)
    except InvalidName as exc:
        fail(str(exc))


def _meta(items: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--meta expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


@contextmanager
def _agent(http_addr: str | None) -> Iterator[AgentClient]:
    """A client whose failures (unreachable agent, refusals) end the command with one line."""
    try:
        with AgentClient(http_addr) as client:
            yield client
    except ClientError as exc:
        fail(str(exc))


def _count(status: dict[str, Any], field: str) -> str:
    value = status.get(field)
    return str(len(value)) if isinstance(value, list) else "-"


def _moment(value: object) -> str:
    """An RFC 3339 time to the second, for narrow tables (json keeps the full value)."""
    if not isinstance(value, str) or not value:
        return "-"
    head, dot, _ = value.partition(".")
    return head + "Z" if dot else value


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def generate_token(
    name: NameOption,
    meta: MetaOption = None,
    http_addr: HttpAddrOption = None,
) -> None:
    """Acceptor: create a PENDING peering and print its one-time token (and nothing else)."""
    peer = _peer_name(name)
    pairs = _meta(meta)
    with _agent(http_addr) as client:
        token = client.generate_token(peer, pairs)
    typer.echo(token)


def establish(
    name: NameOption,
    peering_token: Annotated[
        str,
        typer.Option("--peering-token", "--token", help="the token printed by generate-token"),
    ],
    meta: MetaOption = None,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Dialer: establish a peering with a token; returns once the acceptor accepted."""
    peer = _peer_name(name)
    pairs = _meta(meta)
    with _agent(http_addr) as client:
        client.establish(peer, peering_token.strip(), pairs)
    if output is OutputFormat.JSON:
        print_json({"Established": peer})
    else:
        typer.echo(f"established peering {peer}: the acceptor accepted")


def list_peerings(
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """List this agent's peerings with their state and stream status."""
    with _agent(http_addr) as client:
        views = client.peerings()
    if output is OutputFormat.JSON:
        print_json(views)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="peerings")
    for column in ("NAME", "STATE", "ROLE", "PEER CLUSTER", "IMPORTED", "EXPORTED", "LAST RECEIVE"):
        table.add_column(column)
    for view in views:
        status = view.get("StreamStatus") or {}
        table.add_row(
            _text(view.get("Name")),
            _text(view.get("State")),
            _text(view.get("Role")),
            _text(view.get("PeerServerName")),
            _count(status, "ImportedServices"),
            _count(status, "ExportedServices"),
            _moment(status.get("LastReceive")),
        )
    Console().print(table)


def read(
    name: NameOption,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show one peering: identity, state, role, meta and stream status."""
    peer = _peer_name(name)
    with _agent(http_addr) as client:
        view = client.peering(peer)
    if output is OutputFormat.JSON:
        print_json(view)
        return
    from rich.console import Console
    from rich.table import Table

    status = view.get("StreamStatus") or {}
    rows = [
        ("Name", view.get("Name")),
        ("ID", view.get("ID")),
        ("State", view.get("State")),
        ("Role", view.get("Role")),
        ("Peer cluster", view.get("PeerServerName")),
        ("Kafka", view.get("PeerServerAddresses")),
        ("Meta", view.get("Meta")),
        ("Imports stale", view.get("ImportsStale")),
        ("Imported services", status.get("ImportedServices")),
        ("Exported services", status.get("ExportedServices")),
        ("Last heartbeat", status.get("LastHeartbeat")),
        ("Last receive", status.get("LastReceive")),
        ("Last send", status.get("LastSend")),
    ]
    table = Table(title=f"peering {peer}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, _text(value))
    Console().print(table)


def _peer_action(
    name: str,
    http_addr: str | None,
    output: OutputFormat,
    call: Callable[[AgentClient, str], object],
    json_key: str,
    done: str,
) -> None:
    """One call about one peering, then a line for people or ``{json_key: peer}``."""
    peer = _peer_name(name)
    with _agent(http_addr) as client:
        call(client, peer)
    if output is OutputFormat.JSON:
        print_json({json_key: peer})
    else:
        typer.echo(done.format(peer=peer))


def delete(
    name: NameOption,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Delete a peering: the peer is told (TERMINATED there), imports go on both sides."""
    _peer_action(
        name, http_addr, output, AgentClient.delete_peering, "Deleted", "deleted peering {peer}"
    )


def rotate_keys(
    name: NameOption,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Move an ACTIVE peering to new stream keys (no event lost or applied twice)."""
    _peer_action(
        name,
        http_addr,
        output,
        AgentClient.rotate_keys,
        "RotationRequested",
        "key rotation requested for peering {peer}",
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("generate-token")(generate_token)
    app.command("establish")(establish)
    app.command("list")(list_peerings)
    app.command("read")(read)
    app.command("delete")(delete)
    app.command("rotate-keys")(rotate_keys)
