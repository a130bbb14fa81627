"""The ``peering`` command line: one Typer app, each verb a thin shell over a module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer

from agent import cli_peering, cli_replay
from agent.cli_common import FormatOption, HttpAddrOption, OutputFormat, fail, print_json

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
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="new or empty dir for all state (default: a temp dir)"),
    ] = None,
) -> None:
    """Three clusters on two local Kafkas: peer, export, fail a check, replay; then stop."""
    from agent.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, data_dir=data_dir))


@app.command("agent")
def agent_cmd(
    name: Annotated[str | None, typer.Option(help="this cluster's name")] = None,
    kafka: Annotated[str | None, typer.Option(help="Kafka bootstrap HOST:PORT[,...]")] = None,
    http: Annotated[str | None, typer.Option(help="HTTP API listen HOST:PORT")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state directory")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file")] = None,
    services_file: Annotated[
        Path | None, typer.Option("--services-file", help="TOML/JSON static registrations")
    ] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="text or json")] = None,
) -> None:
    """Run the agent for one cluster (flags > PEERING_* env > config file > defaults)."""
    from agent.config import ConfigError, load_config
    from agent.peering.extension import peering_extension
    from agent.runtime import run

    flags = {
        "name": name,
        "kafka": kafka,
        "http": http,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "services_file": str(services_file) if services_file is not None else None,
        "log_format": log_format,
    }
    try:
        cfg = load_config(config, flags=flags)
    except ConfigError as exc:
        fail(str(exc))
    raise typer.Exit(run(cfg, extensions=[peering_extension]))


@app.command()
def services(
    peer: Annotated[str | None, typer.Option(help="show services imported from this peer")] = None,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """List the local catalog (or a peer's imported services) with health and exports."""
    from agent.client import AgentClient, ClientError

    try:
        with AgentClient(http_addr) as client:
            names = client.services(peer)
            exported: dict[str, list[str]] = {}
            if peer is None:
                for row in client.exported_services():
                    exported[row["Service"]] = list(row["Consumers"]["Peers"])
            rows = []
            for svc, tags in names.items():
                entries = client.health(svc, peer)
                passing = sum(all(c["Status"] == "passing" for c in e["Checks"]) for e in entries)
                rows.append(
                    {
                        "Name": svc,
                        "Tags": tags,
                        "Instances": len(entries),
                        "Passing": passing,
                        "ExportedTo": exported.get(svc, []),
                    }
                )
    except ClientError as exc:
        fail(str(exc))
    if output is OutputFormat.JSON:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    title = f"services imported from {peer}" if peer else "local services"
    table = Table(title=title)
    for column in ("SERVICE", "INSTANCES", "PASSING", "TAGS", "EXPORTED TO"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["Name"]),
            str(row["Instances"]),
            str(row["Passing"]),
            ", ".join(row["Tags"]),  # type: ignore[arg-type]  # built above as list[str]
            ", ".join(row["ExportedTo"]),  # type: ignore[arg-type]  # idem
        )
    Console().print(table)


@app.command()
def export(
    service: Annotated[str, typer.Argument(help="service name, or '*' for all services")],
    peer: Annotated[str, typer.Option(help="consumer peer name")],
    remove: Annotated[bool, typer.Option("--remove", help="stop exporting instead")] = False,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Export a local service to a peer (or stop with --remove)."""
    from agent import catalog
    from agent.client import AgentClient, ClientError
    from agent.names import InvalidName, validate_peer_name, validate_service_name

    try:
        validate_peer_name(peer)
        if service != catalog.WILDCARD:
            validate_service_name(service)
    except InvalidName as exc:
        fail(str(exc))
    try:
        with AgentClient(http_addr) as client:
            entry = client.exported_entry()
            change = catalog.remove_export if remove else catalog.add_export
            entry = change(entry, service, peer)
            client.put_exported_entry(entry)
            entry = client.exported_entry()
    except ClientError as exc:
        fail(str(exc))
    if output is OutputFormat.JSON:
        print_json(msgspec.to_builtins(entry))
        return
    verb = "no longer exported" if remove else "exported"
    typer.echo(f"{service} {verb} to {peer}")
    for svc in entry.Services:
        peers = ", ".join(c.Peer for c in svc.Consumers)
        typer.echo(f"  {svc.Name} -> {peers}")


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="service name")],
    service_id: Annotated[
        str | None, typer.Option("--id", help="instance id (default NAME)")
    ] = None,
    address: Annotated[str, typer.Option(help="instance address")] = "",
    port: Annotated[int, typer.Option(help="instance port")] = 0,
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable)")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable)")] = None,
    ttl: Annotated[str | None, typer.Option(help="add a TTL check, e.g. 30s")] = None,
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Register a service instance with the agent."""
    from agent.client import AgentClient, ClientError

    pairs: dict[str, str] = {}
    for item in meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--meta expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    body: dict[str, object] = {"Name": name, "Address": address, "Port": port}
    if service_id:
        body["ID"] = service_id
    if tag:
        body["Tags"] = tag
    if pairs:
        body["Meta"] = pairs
    if ttl:
        body["Check"] = {"TTL": ttl}
    try:
        with AgentClient(http_addr) as client:
            client.register(body)
    except ClientError as exc:
        fail(str(exc))
    if output is OutputFormat.JSON:
        print_json({"Registered": service_id or name})
    else:
        typer.echo(f"registered {service_id or name}")


@app.command()
def deregister(
    service_id: Annotated[str, typer.Argument(help="instance id")],
    http_addr: HttpAddrOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Remove a service instance from the agent."""
    from agent.client import AgentClient, ClientError

    try:
        with AgentClient(http_addr) as client:
            client.deregister(service_id)
    except ClientError as exc:
        fail(str(exc))
    if output is OutputFormat.JSON:
        print_json({"Deregistered": service_id})
    else:
        typer.echo(f"deregistered {service_id}")


# Verbs that live in their own modules register themselves here.
cli_peering.register(app)
cli_replay.register(app)


def main() -> None:
    app()
