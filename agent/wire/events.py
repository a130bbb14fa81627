"""Stream events: the plaintext inside every stream record (promise 3).

A tagged union on ``Type``. Every event carries the exporter's key ``Epoch``, a per-stream
``Seq`` that strictly increases across epochs (replays and re-orders are detected by it) and
``SentAt``. Evolution: new fields get defaults; new event types are new tags. An importer
decodes an unknown tag into ``UnknownEvent`` (skipped and counted, its Seq still consumed)
and ignores unknown fields, so a newer peer never breaks an older one.

Each event has a logical key; the Kafka record key is a keyed hash of it (see keys.py), so
compaction keeps exactly the latest record per instance and per control key.
"""

from __future__ import annotations

import msgspec

from agent.model import ServiceInstance

INSTANCE_KEY_PREFIX = "instance/"
HEARTBEAT_KEY = "control/heartbeat"
STREAM_HEAD_KEY = "control/stream-head"
TERMINATED_KEY = "control/terminated"
RESYNC_REQUEST_KEY = "control/resync-request"


class _EventBase(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="Type", forbid_unknown_fields=False
):
    Epoch: int
    Seq: int
    SentAt: float


class InstanceUpsert(_EventBase, frozen=True, tag="instance_upsert"):
    """An exported instance appeared or changed (health changes included)."""

    Key: str
    Instance: ServiceInstance
    ChangedAt: float


class InstanceRemove(_EventBase, frozen=True, tag="instance_remove"):
    """An instance is no longer exported to this peer (deregistered or unexported)."""

    Key: str
    ChangedAt: float


class Heartbeat(_EventBase, frozen=True, tag="heartbeat"):
    """Liveness; also tells how many keys the exporter considers live, so an importer can
    notice a view that drifted (e.g. records deleted by a forged compaction tombstone)."""

    LiveKeys: int = -1


class KeyRotation(_EventBase, frozen=True, tag="key_rotation"):
    """Sent under the current epoch: records from ``NewEpoch`` on use the next key, derived
    with a DH between ``RotationPublicKey`` and the importer's static key."""

    NewEpoch: int
    RotationPublicKey: bytes


class StreamHead(_EventBase, frozen=True, tag="stream_head"):
    """Marks a full republish (after restart reconcile, rotation or lost records): the
    exporter's live key count at this Seq, and epochs the importer may now forget."""

    LiveKeys: int
    Reason: str = ""
    RetireEpochsBelow: int = 0


class Terminated(_EventBase, frozen=True, tag="terminated"):
    """The exporter deleted the peering (promise 7)."""

    Reason: str = ""


class ResyncRequest(_EventBase, frozen=True, tag="resync_request"):
    """Sent by an importer on its own outbound stream: its view of the *other* stream drifted
    and rebuilding from the topic did not help, so that stream's exporter must republish."""

    Reason: str = ""


Event = (
    InstanceUpsert
    | InstanceRemove
    | Heartbeat
    | KeyRotation
    | StreamHead
    | Terminated
    | ResyncRequest
)

EVENT_TYPES: tuple[type[_EventBase], ...] = (
    InstanceUpsert,
    InstanceRemove,
    Heartbeat,
    KeyRotation,
    StreamHead,
    Terminated,
    ResyncRequest,
)
KNOWN_TAGS = frozenset(str(t.__struct_config__.tag) for t in EVENT_TYPES)


class UnknownEvent(msgspec.Struct, frozen=True):
    """An authentic event of a type this agent does not know (from a newer peer)."""

    Type: str
    Epoch: int
    Seq: int
    SentAt: float = 0.0


def instance_key(instance_id: str) -> str:
    """Logical key of an exported instance."""
    return INSTANCE_KEY_PREFIX + instance_id


def rotation_key(new_epoch: int) -> str:
    """One logical key per rotation: compaction must keep every rotation still needed."""
    return f"control/rotation/{new_epoch}"


def logical_key(event: Event | UnknownEvent) -> str | None:
    """The logical key an event is filed under; None for unknown types (not checkable)."""
    match event:
        case InstanceUpsert() | InstanceRemove():
            return event.Key
        case Heartbeat():
            return HEARTBEAT_KEY
        case KeyRotation():
            return rotation_key(event.NewEpoch)
        case StreamHead():
            return STREAM_HEAD_KEY
        case Terminated():
            return TERMINATED_KEY
        case ResyncRequest():
            return RESYNC_REQUEST_KEY
        case UnknownEvent():
            return None
