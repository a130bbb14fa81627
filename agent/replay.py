"""Replay core: a stream's records as a timeline, the imported state at any cut point, the
difference with a live catalog, and the story of one service (``peering replay``).

Pure: records and keys come in as values (agent.replay_io reads them from Kafka, a dump
file or the agent's data dir). Every record is decoded by ``agent.wire.envelope`` and folded
by ``agent.reducer.apply`` -- the same fold the live importer runs -- so replay and reality
cannot disagree. A record that does not decode (forged, bad key, malformed) or that the
reducer refuses (replayed Seq, old epoch) becomes a ``rejected`` row; the replay goes on.

File formats (JSON, msgspec Structs below; bytes are standard base64):

- dump: one ``DumpHeader`` line, then one ``RawRecord`` line per Kafka record;
- key file: one ``KeyFile`` document (secret: the stream keys and our private key).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from agent import reducer
from agent.model import ServiceInstance
from agent.reducer import ImportMode, ImportState, Rejected, RotatedKeys
from agent.wire import keys
from agent.wire.envelope import Decoded, Reject, decode_record
from agent.wire.events import (
    Heartbeat,
    InstanceRemove,
    InstanceUpsert,
    KeyRotation,
    ResyncRequest,
    StreamHead,
    Terminated,
    UnknownEvent,
    logical_key,
)
from agent.wire.keys import StreamKeyring

DUMP_FORMAT = "peering-dump"
DUMP_VERSION = 1
KEY_FILE_FORMAT = "peering-keys"
KEY_FILE_VERSION = 1

Direction = Literal["in", "out", "bootstrap"]


class ReplayError(Exception):
    """A user fault (bad cut point, wrong file, keys of another peering); str() is one line."""


# --- file formats ---------------------------------------------------------------------------


class RawRecord(msgspec.Struct, frozen=True):
    """One Kafka record as replay needs it (and as a dump file stores it, one per line)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class DumpHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """First line of a dump file."""

    Format: str = DUMP_FORMAT
    Version: int = DUMP_VERSION
    Topic: str
    PeeringID: str
    Peer: str
    Direction: str
    # Kafka end offset when the dump started: the dump holds the records below it.
    EndOffset: int = -1
    CreatedAt: float = 0.0


class KeyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Everything replay needs to decrypt both streams of one peering on another host."""

    Format: str = KEY_FILE_FORMAT
    Version: int = KEY_FILE_VERSION
    Warning: str = "SECRET: stream keys and this cluster's private key for one peering"
    PeeringID: str
    Peer: str
    Bootstrap: tuple[str, ...] = ()
    BootstrapTopic: str = ""
    ImportTopic: str
    ExportTopic: str
    # Every epoch known locally (initial keyring merged with the live one).
    ImportKeyring: StreamKeyring
    ExportKeyring: StreamKeyring
    # This side's static X25519 key: needed to follow key rotations of the import stream.
    PrivateKey: bytes


def check_header(header: DumpHeader) -> None:
    if header.Format != DUMP_FORMAT:
        raise ReplayError(f"not a peering dump (format {header.Format!r})")
    if header.Version != DUMP_VERSION:
        raise ReplayError(f"dump format version {header.Version} is not supported")


def check_key_file(key_file: KeyFile) -> None:
    if key_file.Format != KEY_FILE_FORMAT:
        raise ReplayError(f"not a peering key file (format {key_file.Format!r})")
    if key_file.Version != KEY_FILE_VERSION:
        raise ReplayError(f"key file version {key_file.Version} is not supported")


def merge_keyrings(*rings: StreamKeyring | None) -> StreamKeyring:
    """One keyring holding every epoch of the given ones (same peering and direction)."""
    present = [r for r in rings if r is not None]
    if not present:
        raise ReplayError("no keyring for this stream (the peering was never established)")
    secrets: dict[int, bytes] = {}
    for ring in present:
        secrets.update(ring.EpochSecrets)
    return msgspec.structs.replace(
        present[-1],
        EpochSecrets=dict(sorted(secrets.items())),
        CurrentEpoch=max(r.CurrentEpoch for r in present),
    )


# --- cut points -----------------------------------------------------------------------------


class Point(msgspec.Struct, frozen=True):
    """A cut point: a Kafka offset, or a record timestamp (ms since the epoch)."""

    offset: int | None = None
    time_ms: int | None = None

    def after(self, record: RawRecord) -> bool:
        """True when ``record`` lies beyond this point (used for ``--until``)."""
        if self.offset is not None:
            return record.offset > self.offset
        assert self.time_ms is not None
        return record.timestamp_ms > self.time_ms

    def before(self, record: RawRecord) -> bool:
        """True when ``record`` lies before this point (used for ``--from``)."""
        if self.offset is not None:
            return record.offset < self.offset
        assert self.time_ms is not None
        return record.timestamp_ms < self.time_ms


_UNIX_SECONDS = re.compile(r"^@?\d+(\.\d*)?$")


def parse_point(text: str) -> Point:
    """``123`` is an offset; ``@1700000000`` or ``1700000000.5`` are unix seconds; anything
    else must be ISO-8601 (``2024-05-01T10:42:00Z``; no zone means UTC)."""
    text = text.strip()
    if text.isdigit():
        return Point(offset=int(text))
    if _UNIX_SECONDS.match(text) and (text.startswith("@") or "." in text):
        return Point(time_ms=round(float(text.lstrip("@")) * 1000))
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(
            f"{text!r} is neither an offset, @UNIX_SECONDS nor an ISO-8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return Point(time_ms=round(moment.timestamp() * 1000))


def iso_time(timestamp_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(timestamp_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- views of instances ---------------------------------------------------------------------


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """What an operator compares: one imported instance, flattened."""

    service: str
    id: str
    address: str
    port: int
    health: str
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = msgspec.field(default_factory=dict)


def view(instance: ServiceInstance) -> InstanceView:
    return InstanceView(
        service=instance.Name,
        id=instance.ID,
        address=instance.Address,
        port=instance.Port,
        health=instance.status.value,
        tags=tuple(instance.Tags),
        meta=dict(instance.Meta),
    )


def state_views(state: ImportState, service: str | None = None) -> list[InstanceView]:
    """The imported catalog of a state, ordered by (service, id)."""
    views = [view(i) for i in state.Instances.values() if service is None or i.Name == service]
    return sorted(views, key=lambda v: (v.service, v.id))


_WORST = {"passing": 0, "warning": 1, "critical": 2}


def views_from_health(entries: Iterable[Mapping[str, Any]]) -> list[InstanceView]:
    """Instances from a ``/v1/health/service/<name>?peer=`` answer (Consul's JSON)."""
    views = []
    for entry in entries:
        service = entry["Service"]
        health = "passing"
        for check in entry.get("Checks") or []:
            status = str(check.get("Status", "critical"))
            if _WORST.get(status, 2) > _WORST[health]:
                health = status if status in _WORST else "critical"
        views.append(
            InstanceView(
                service=str(service["Service"]),
                id=str(service["ID"]),
                address=str(service.get("Address", "")),
                port=int(service.get("Port", 0)),
                health=health,
                tags=tuple(service.get("Tags") or ()),
                meta=dict(service.get("Meta") or {}),
            )
        )
    return sorted(views, key=lambda v: (v.service, v.id))


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One way the replayed state and the live catalog disagree."""

    service: str
    id: str
    # "missing_live": replay has it, the agent not; "missing_replay": the other way round;
    # "changed": both have it, ``fields`` differ.
    difference: str
    fields: tuple[str, ...] = ()
    replayed: InstanceView | None = None
    live: InstanceView | None = None


def diff(replayed: Sequence[InstanceView], live: Sequence[InstanceView]) -> list[Difference]:
    """Differences between two catalogs, ordered by (service, id)."""
    mine = {(v.service, v.id): v for v in replayed}
    theirs = {(v.service, v.id): v for v in live}
    out: list[Difference] = []
    for service, iid in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get((service, iid)), theirs.get((service, iid))
        if b is None:
            out.append(Difference(service=service, id=iid, difference="missing_live", replayed=a))
        elif a is None:
            out.append(Difference(service=service, id=iid, difference="missing_replay", live=b))
        elif a != b:
            fields = tuple(
                f for f in InstanceView.__struct_fields__ if getattr(a, f) != getattr(b, f)
            )
            out.append(
                Difference(
                    service=service, id=iid, difference="changed", fields=fields, replayed=a, live=b
                )
            )
    return out


# --- the timeline ---------------------------------------------------------------------------


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One record of the timeline (``--format jsonl`` prints it as is, with kind=event)."""

    offset: int
    timestamp_ms: int
    time: str
    epoch: int | None
    seq: int | None
    type: str
    summary: str
    key: str | None = None
    service: str | None = None
    instance: str | None = None
    # added / updated / removed / "" (no change to the imported catalog)
    change: str = ""
    # Why a record was rejected (RejectReason value), "" for applied records.
    reason: str = ""
    detail: str = ""


class Step(msgspec.Struct, frozen=True):
    """A record, its row, the instance it touched before/after, and the state after it."""

    row: Row
    before: ServiceInstance | None
    after: ServiceInstance | None
    state: ImportState


class StreamKeys(msgspec.Struct, frozen=True):
    """The keyring to decode with; ``importer_private`` follows rotations (direction in)."""

    keyring: StreamKeyring
    importer_private: bytes | None = None


def _instance_summary(instance: ServiceInstance) -> str:
    return (
        f"{instance.Name}/{instance.ID} {instance.Address}:{instance.Port} {instance.status.value}"
    )


def _describe(
    decoded: Decoded, before: ServiceInstance | None
) -> tuple[str, str, str | None, str | None]:
    """(type, summary, service, instance id) of a decoded record."""
    match decoded:
        case Reject():
            detail = f" ({decoded.detail})" if decoded.detail else ""
            return "rejected", f"rejected: {decoded.reason.value}{detail}", None, None
        case InstanceUpsert():
            inst = decoded.Instance
            return "instance_upsert", _instance_summary(inst), inst.Name, inst.ID
        case InstanceRemove():
            iid = decoded.Key.removeprefix("instance/")
            name = before.Name if before is not None else None
            label = f"{name}/{iid}" if name else decoded.Key
            return "instance_remove", f"remove {label}", name, iid
        case Heartbeat():
            return "heartbeat", f"LiveKeys={decoded.LiveKeys}", None, None
        case StreamHead():
            text = f"LiveKeys={decoded.LiveKeys} reason={decoded.Reason!r}"
            if decoded.RetireEpochsBelow:
                text += f" retire<{decoded.RetireEpochsBelow}"
            return "stream_head", text, None, None
        case KeyRotation():
            return "key_rotation", f"new epoch {decoded.NewEpoch}", None, None
        case Terminated():
            return "terminated", f"peering deleted: {decoded.Reason!r}", None, None
        case ResyncRequest():
            return "resync_request", f"peer asks for a republish: {decoded.Reason!r}", None, None
        case UnknownEvent():
            return "unknown", f"unknown event type {decoded.Type!r}", None, None


def _change(before: ServiceInstance | None, after: ServiceInstance | None) -> str:
    if before is None:
        return "" if after is None else "added"
    if after is None:
        return "removed"
    return "" if before == after else "updated"


def timeline(records: Iterable[RawRecord], stream: StreamKeys) -> Iterator[Step]:
    """Decode and fold every record in offset order (never raises for bad records)."""
    state = ImportState()
    keyring = stream.keyring
    for record in records:
        decoded = decode_record(keyring, record.key, record.value)
        key = None if isinstance(decoded, Reject) else logical_key(decoded)
        before = state.Instances.get(key) if key is not None else None
        state, effects = reducer.apply(
            state, record.offset, decoded, record.timestamp_ms / 1000, ImportMode.REBUILD
        )
        after = state.Instances.get(key) if key is not None else None
        kind, summary, service, iid = _describe(decoded, before)
        reason = detail = ""
        if isinstance(decoded, Reject):
            reason, detail = decoded.reason.value, decoded.detail
        for effect in effects:
            if isinstance(effect, Rejected) and not reason:
                # Authentic but refused by the reducer (a replayed Seq, an old epoch).
                reason, detail = effect.reason.value, effect.detail
                summary = f"rejected: {reason} ({detail}) {kind}: {summary}"
                kind = "rejected"
            elif isinstance(effect, RotatedKeys) and stream.importer_private is not None:
                keyring = keys.accept_rotation(
                    keyring, effect.new_epoch, effect.rotation_public_key, stream.importer_private
                )
        epoch = seq = None
        if not isinstance(decoded, Reject):
            epoch, seq = decoded.Epoch, decoded.Seq
        row = Row(
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            time=iso_time(record.timestamp_ms),
            epoch=epoch,
            seq=seq,
            type=kind,
            summary=summary,
            key=key,
            service=service,
            instance=iid,
            change=_change(before, after),
            reason=reason,
            detail=detail,
        )
        yield Step(row, before, after, state)


def until(steps: Iterable[Step], point: Point | None) -> Iterator[Step]:
    """The steps up to and including ``point`` (all of them without one)."""
    for step in steps:
        if point is not None and point.after(_raw(step.row)):
            return
        yield step


def window(steps: Iterable[Step], start: Point | None) -> Iterator[Step]:
    """The steps from ``start`` on (the fold before it still happened)."""
    for step in steps:
        if start is None or not start.before(_raw(step.row)):
            yield step


def _raw(row: Row) -> RawRecord:
    return RawRecord(row.offset, row.timestamp_ms, None, None)


def touches(step: Step, service: str) -> bool:
    """True when the record upserted or removed an instance of ``service``."""
    return step.row.service == service


def final_state(steps: Iterable[Step]) -> ImportState:
    state = ImportState()
    for step in steps:
        state = step.state
    return state


class Explained(msgspec.Struct, frozen=True, kw_only=True):
    """One event touching the explained service, with its instance before and after."""

    row: Row
    before: InstanceView | None
    after: InstanceView | None
    # The service's instances right after the event.
    instances_after: list[InstanceView]


def explain(steps: Iterable[Step], service: str) -> Iterator[Explained]:
    for step in steps:
        if touches(step, service):
            yield Explained(
                row=step.row,
                before=view(step.before) if step.before is not None else None,
                after=view(step.after) if step.after is not None else None,
                instances_after=state_views(step.state, service),
            )
