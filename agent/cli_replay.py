"""CLI verbs ``replay``, ``dump`` and ``export-keys`` (registered on the app in agent.cli).

Thin shells: agent.replay_io reads (Kafka without a consumer group, dump files, the data dir
read-only), agent.replay decides, this module prints. Exit codes: 0 ok, 1 error, 3 when
``--diff`` found differences.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from agent import replay
from agent.cli_common import fail
from agent.replay import InstanceView, KeyFile, RawRecord, ReplayError, Step

if TYPE_CHECKING:
    from agent.kafka_client import KafkaSettings

DIFF_EXIT = 3


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class DumpDirection(enum.StrEnum):
    IN = "in"
    OUT = "out"
    BOOTSTRAP = "bootstrap"


class Format(enum.StrEnum):
    TABLE = "table"
    JSONL = "jsonl"


PeerOption = Annotated[str, typer.Option("--peer", help="the peering's local name")]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="PEERING_DATA_DIR",
        help="the agent's state dir, opened read-only (default ./data)",
    ),
]
KafkaOption = Annotated[
    str | None, typer.Option("--kafka", help="Kafka HOST:PORT[,...] (default: the peering's)")
]
KeysOption = Annotated[
    Path | None, typer.Option("--keys", help="key file from `peering export-keys`")
]


def _keys(
    peer: str, data_dir: Path | None, keys_file: Path | None
) -> tuple[KeyFile, KafkaSettings]:
    """The key file (from --keys or the data dir) and the Kafka settings it implies."""
    from agent import replay_io
    from agent.kafka_client import KafkaSettings

    if keys_file is not None:
        key_file = replay_io.read_key_file(keys_file)
        if key_file.Peer != peer:
            raise ReplayError(f"{keys_file} holds the keys of peer {key_file.Peer!r}, not {peer!r}")
        return key_file, KafkaSettings(bootstrap=key_file.Bootstrap)
    return replay_io.keys_from_data_dir(data_dir or Path("data"), peer)


def _kafka(default: KafkaSettings, kafka: str | None) -> KafkaSettings:
    from agent.kafka_client import KafkaSettings

    return KafkaSettings.plain(kafka) if kafka else default


# --- progress -----------------------------------------------------------------------------


def _with_progress(records: Iterable[RawRecord], total: int, label: str) -> Iterator[RawRecord]:
    """Records/s and ETA on stderr when it is a terminal; a plain pass-through otherwise."""
    if not sys.stderr.isatty() or total <= 0:
        yield from records
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            count = int(task.fields.get("records", 0))
            rate = count / elapsed if elapsed > 0 else 0.0
            return Text(f"{count:,} records {rate:,.0f} records/s")

    columns = (TextColumn("{task.description}"), BarColumn(), Rate(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total, records=0)
        last = 0.0
        for count, record in enumerate(records, start=1):
            clock = time.monotonic()
            if clock - last > 0.1:
                progress.update(task, completed=record.offset + 1, records=count)
                last = clock
            yield record


# --- output ---------------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def _jsonl(kind: str, value: msgspec.Struct) -> None:
    body = msgspec.to_builtins(value)
    sys.stdout.write(_json.encode({"kind": kind, **body}).decode() + "\n")


def _row_line(row: replay.Row) -> str:
    epoch = "-" if row.epoch is None else str(row.epoch)
    seq = "-" if row.seq is None else str(row.seq)
    return f"{row.offset:>8}  {row.time}  {epoch:>5}  {seq:>7}  {row.type:<16} {row.summary}"


_ROW_HEADER = f"{'OFFSET':>8}  {'TIME':<24}  {'EPOCH':>5}  {'SEQ':>7}  {'TYPE':<16} SUMMARY"


def _view_line(v: InstanceView | None) -> str:
    if v is None:
        return "(none)"
    return f"{v.service}/{v.id} {v.address}:{v.port} {v.health}"


def _print_state(views: list[InstanceView], fmt: Format, title: str) -> None:
    if fmt is Format.JSONL:
        for v in views:
            _jsonl("instance", v)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("SERVICE", "ID", "ADDRESS", "HEALTH", "TAGS"):
        table.add_column(column)
    for v in views:
        table.add_row(v.service, v.id, f"{v.address}:{v.port}", v.health, ", ".join(v.tags))
    Console().print(table)


def _live_views(http_addr: str | None, peer: str, services: set[str]) -> list[InstanceView]:
    from agent.client import AgentClient

    views: list[InstanceView] = []
    with AgentClient(http_addr) as client:
        for name in sorted(services | set(client.services(peer))):
            views.extend(replay.views_from_health(client.health(name, peer)))
    return views


def _print_diff(differences: list[replay.Difference], fmt: Format) -> None:
    if fmt is Format.JSONL:
        for d in differences:
            _jsonl("difference", d)
        return
    if not differences:
        typer.echo("no differences: the replayed state matches the live imported catalog")
    for d in differences:
        if d.difference == "changed":
            fields = ", ".join(d.fields)
            typer.echo(
                f"~ {d.service}/{d.id}: {fields} differ: replay {_view_line(d.replayed)}"
                f" | live {_view_line(d.live)}"
            )
        elif d.difference == "missing_live":
            typer.echo(f"- {d.service}/{d.id}: in the replay only: {_view_line(d.replayed)}")
        else:
            typer.echo(f"+ {d.service}/{d.id}: live only: {_view_line(d.live)}")


def _print_explained(steps: Iterable[replay.Explained], fmt: Format) -> None:
    for e in steps:
        if fmt is Format.JSONL:
            _jsonl("explain", e)
            continue
        typer.echo(_row_line(e.row))
        typer.echo(f"          before: {_view_line(e.before)}")
        typer.echo(f"          after:  {_view_line(e.after)}")
        names = ", ".join(f"{v.id}({v.health})" for v in e.instances_after) or "no instances"
        typer.echo(f"          service now: {names}")


def _print_timeline(steps: Iterable[Step], fmt: Format, service: str | None) -> None:
    if fmt is Format.TABLE:
        typer.echo(_ROW_HEADER)
    for step in steps:
        if service is not None and not replay.touches(step, service):
            continue
        if fmt is Format.JSONL:
            _jsonl("event", step.row)
        else:
            typer.echo(_row_line(step.row))


# --- the verbs ------------------------------------------------------------------------------


def replay_cmd(
    peer: PeerOption,
    direction: Annotated[
        Direction | None,
        typer.Option("--direction", help="in: what the peer sent us (default); out: what we sent"),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="first record shown: OFFSET, @UNIX_SECONDS or ISO-8601"),
    ] = None,
    stop: Annotated[
        str | None,
        typer.Option("--until", help="last record applied: OFFSET, @UNIX_SECONDS or ISO-8601"),
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="only events/instances of this service")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table for people, jsonl for tools")] = (
        Format.TABLE
    ),
    data_dir: DataDirOption = None,
    kafka: KafkaOption = None,
    keys_file: KeysOption = None,
    dump_file: Annotated[
        Path | None, typer.Option("--file", help="replay a `peering dump` file (no broker)")
    ] = None,
    state: Annotated[
        bool, typer.Option("--state", help="print the imported catalog at --until")
    ] = False,
    show_diff: Annotated[
        bool, typer.Option("--diff", help="compare the state at --until with the live agent")
    ] = False,
    http_addr: Annotated[
        str | None,
        typer.Option("--http-addr", envvar="PEERING_HTTP_ADDR", help="agent HTTP address"),
    ] = None,
    explain_service: Annotated[
        str | None,
        typer.Option("--explain", help="every event touching SERVICE, with before/after"),
    ] = None,
) -> None:
    """Replay a peering's stream as a timeline, or rebuild its imported state at a cut point.

    Read-only: never writes the agent's state or Kafka, never joins a consumer group.
    """
    from agent import replay_io

    try:
        until_point = replay.parse_point(stop) if stop else None
        from_point = replay.parse_point(start) if start else None
        key_file, settings = _keys(peer, data_dir, keys_file)
        if dump_file is not None:
            header = replay_io.read_dump_header(dump_file)
            if header.PeeringID != key_file.PeeringID:
                raise ReplayError(
                    f"{dump_file} is a dump of peering {header.PeeringID}, the keys are of"
                    f" {key_file.PeeringID}"
                )
            if header.Direction == DumpDirection.BOOTSTRAP:
                raise ReplayError("a bootstrap dump holds the handshake, not a stream to replay")
            if direction is not None and direction.value != header.Direction:
                raise ReplayError(f"{dump_file} holds direction {header.Direction!r}")
            chosen = Direction(header.Direction)
            records: Iterable[RawRecord] = replay_io.read_dump(dump_file)
            total = header.EndOffset
        else:
            chosen = direction or Direction.IN
            topic = key_file.ImportTopic if chosen is Direction.IN else key_file.ExportTopic
            settings = _kafka(settings, kafka)
            last = until_point.offset if until_point is not None else None
            total = replay_io.end_offset(settings, topic)
            if last is not None:
                total = min(total, last + 1)
            records = replay_io.read_kafka(settings, topic, last_offset=last)
        if chosen is Direction.IN:
            stream = replay.StreamKeys(key_file.ImportKeyring, key_file.PrivateKey)
        else:
            stream = replay.StreamKeys(key_file.ExportKeyring, None)
        records = _with_progress(records, total, f"replay {peer} {chosen.value}")
        steps = replay.until(replay.timeline(records, stream), until_point)
        if explain_service is not None:
            _print_explained(replay.explain(replay.window(steps, from_point), explain_service), fmt)
            return
        if state or show_diff:
            views = replay.state_views(replay.final_state(steps), service)
            if not show_diff:
                _print_state(views, fmt, f"imported from {peer} at {stop or 'the end'}")
                return
            live = _live_views(http_addr, peer, {v.service for v in views})
            if service is not None:
                live = [v for v in live if v.service == service]
            differences = replay.diff(views, live)
            _print_diff(differences, fmt)
            if differences:
                raise typer.Exit(DIFF_EXIT)
            return
        _print_timeline(replay.window(steps, from_point), fmt, service)
    except ReplayError as exc:
        fail(str(exc))
    except Exception as exc:
        from agent.client import ClientError

        if isinstance(exc, ClientError):
            fail(str(exc))
        raise


def dump_cmd(
    peer: PeerOption,
    out: Annotated[Path, typer.Option("--out", help="file to write (JSON lines)")],
    direction: Annotated[
        DumpDirection, typer.Option("--direction", help="in, out or bootstrap")
    ] = DumpDirection.IN,
    data_dir: DataDirOption = None,
    kafka: KafkaOption = None,
    keys_file: KeysOption = None,
) -> None:
    """Write a stream's (or the bootstrap topic's) raw records to a file for a bug report.

    The records stay encrypted; `peering replay --file` reads the file with no broker.
    """
    from agent import replay_io

    try:
        key_file, settings = _keys(peer, data_dir, keys_file)
        settings = _kafka(settings, kafka)
        topic = {
            DumpDirection.IN: key_file.ImportTopic,
            DumpDirection.OUT: key_file.ExportTopic,
            DumpDirection.BOOTSTRAP: key_file.BootstrapTopic,
        }[direction]
        end = replay_io.end_offset(settings, topic)
        header = replay.DumpHeader(
            Topic=topic,
            PeeringID=key_file.PeeringID,
            Peer=peer,
            Direction=direction.value,
            EndOffset=end,
            CreatedAt=time.time(),
        )
        records = _with_progress(
            replay_io.read_kafka(settings, topic, last_offset=end - 1), end, f"dump {topic}"
        )
        try:
            with out.open("wb") as f:
                count = replay_io.write_dump(f, header, records)
        except OSError as exc:
            raise ReplayError(f"cannot write {out}: {exc.strerror}") from None
    except ReplayError as exc:
        fail(str(exc))
    typer.echo(f"wrote {count} records of {topic} (offsets < {end}) to {out}", err=True)


def export_keys_cmd(
    peer: PeerOption,
    out: Annotated[Path, typer.Option("--out", help="key file to write (mode 0600)")],
    data_dir: DataDirOption = None,
) -> None:
    """Write a peering's stream keys and private key to a file, for replay on another host."""
    from agent import replay_io

    try:
        key_file, _settings = replay_io.keys_from_data_dir(data_dir or Path("data"), peer)
        try:
            replay_io.write_secret_file(out, msgspec.json.format(msgspec.json.encode(key_file)))
        except OSError as exc:
            raise ReplayError(f"cannot write {out}: {exc.strerror}") from None
    except ReplayError as exc:
        fail(str(exc))
    typer.secho(
        f"WARNING: {out} holds the SECRET stream keys and private key of peering {peer!r}.\n"
        "Anyone with this file and access to the broker can read every event of both streams\n"
        "and forge events the peer will accept. Keep it on the debugging host only (mode 0600)\n"
        "and delete it when done; delete and re-establish the peering if it leaks.",
        err=True,
        fg=typer.colors.RED,
        bold=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("replay")(replay_cmd)
    app.command("dump")(dump_cmd)
    app.command("export-keys")(export_keys_cmd)
