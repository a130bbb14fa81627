"""Pure stream cores: the importer's reducer and the exporter's publish planner.

Importer: ``apply(state, offset, decoded, now)`` folds one decoded record into an
``ImportState`` and returns plain-value effects. The shell commits the new state (imported
instances, LastOffset, LastSeq) and the record in one SQLite transaction, so re-reading the
same records after a crash changes nothing: a record at or below LastOffset is ignored
(exactly-once effect, promise 5). The same fold runs live, in ``replay`` and in ``rebuild``
(resync from the compacted topic, promise 8).

Exporter: ``reconcile(state, desired, now)`` compares the exported view with what was last
published (fingerprints) and returns the events to publish, with Epoch and Seq assigned.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

import immutables
import msgspec

from agent import crypto
from agent.model import ServiceInstance
from agent.wire import keys
from agent.wire.envelope import Decoded, Reject, decode_record
from agent.wire.events import (
    Event,
    Heartbeat,
    InstanceRemove,
    InstanceUpsert,
    KeyRotation,
    ResyncRequest,
    StreamHead,
    Terminated,
    UnknownEvent,
)
from agent.wire.keys import StreamKeyring
from agent.wire.reasons import RejectReason

# ---------------------------------------------------------------------------------------
# Importer side


class ResyncReason(enum.StrEnum):
    """Why the importer must rebuild the peer's imported set (metric label)."""

    SEQ_GAP = "seq_gap"
    OFFSET_RESET = "offset_reset"
    EPOCH_JUMP = "epoch_jump"
    COUNT_MISMATCH = "count_mismatch"


class ImportMode(enum.StrEnum):
    """LIVE reacts to gaps with ResyncRequired; REBUILD expects compaction gaps."""

    LIVE = "live"
    REBUILD = "rebuild"


_K = TypeVar("_K")
_V = TypeVar("_V")


def _persistent(mapping: Mapping[_K, _V]) -> immutables.Map[_K, _V]:
    """``mapping`` as a persistent map: as it is when the reducer made it, else one O(n) copy
    (a state decoded from JSON, loaded from the store or built by a test)."""
    return mapping if isinstance(mapping, immutables.Map) else immutables.Map(mapping)


class ImportState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the importer knows about one stream; persisted atomically by the shell."""

    # A persistent map (immutables.Map) once the reducer touched it: a batch then costs
    # O(changes · log n) and shares the rest with the previous state, where copying a dict to
    # stay pure cost milliseconds per batch at 100k instances. Typed as a Mapping because
    # msgspec can neither encode nor decode an immutables.Map: decoding gives a dict, which
    # ``_persistent`` converts once, and the store encodes the state without its instances.
    Instances: Mapping[str, ServiceInstance] = msgspec.field(default_factory=immutables.Map)
    LastOffset: int = -1
    LastSeq: int = 0
    # Epoch of the last applied event; 0 before the first one.
    Epoch: int = 0
    # Highest epoch announced by a KeyRotation; records in it are expected, not a jump.
    AnnouncedEpoch: int = 0
    LastReceiveAt: float = 0.0
    LastHeartbeatAt: float = 0.0
    PeerLiveKeys: int = -1
    Terminated: bool = False


class Upserted(msgspec.Struct, frozen=True):
    key: str
    instance: ServiceInstance
    # When the exporter saw the change: the start of the propagation delay.
    changed_at: float = 0.0


class Removed(msgspec.Struct, frozen=True):
    key: str
    changed_at: float = 0.0


class HeartbeatSeen(msgspec.Struct, frozen=True):
    sent_at: float


class Rejected(msgspec.Struct, frozen=True):
    reason: RejectReason
    offset: int
    detail: str = ""


class ResyncRequired(msgspec.Struct, frozen=True):
    why: ResyncReason
    detail: str = ""


class RotatedKeys(msgspec.Struct, frozen=True):
    """The shell must call keys.accept_rotation before decoding the next record."""

    new_epoch: int
    rotation_public_key: bytes


class RetireEpochs(msgspec.Struct, frozen=True):
    below: int


class PeerTerminated(msgspec.Struct, frozen=True):
    reason: str


class RepublishRequested(msgspec.Struct, frozen=True):
    """The peer asks us (as exporter of the other stream) for ``republish_all``."""

    reason: str


Effect = (
    Upserted
    | Removed
    | HeartbeatSeen
    | Rejected
    | ResyncRequired
    | RotatedKeys
    | RetireEpochs
    | PeerTerminated
    | RepublishRequested
)


def apply(
    state: ImportState,
    offset: int,
    decoded: Decoded,
    now: float,
    mode: ImportMode = ImportMode.LIVE,
) -> tuple[ImportState, list[Effect]]:
    """Fold one record (at Kafka ``offset``) into the state. Never raises for bad input."""
    new_state, effects, changes = _fold(state, state.Instances, offset, decoded, now, mode)
    if changes:
        # The new map shares all but the changed paths with the old one, which stays valid.
        with _persistent(state.Instances).mutate() as instances:
            _change(instances, changes)
            new_state = msgspec.structs.replace(new_state, Instances=instances.finish())
    return new_state, effects


_Change = tuple[str, ServiceInstance | None]


class _Instances(Protocol):
    """What the fold reads of the imported set: a Mapping, or a map under mutation."""

    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...


def _change(
    instances: immutables.MapMutation[str, ServiceInstance], changes: list[_Change]
) -> None:
    for key, instance in changes:
        if instance is None:
            instances.pop(key, None)
        else:
            instances[key] = instance


def _fold(
    state: ImportState,
    instances: _Instances,
    offset: int,
    decoded: Decoded,
    now: float,
    mode: ImportMode,
) -> tuple[ImportState, list[Effect], list[_Change]]:
    """Fold one record; ``instances`` is the imported set before it (``state.Instances`` may
    lag behind it inside ``ingest``). The changes to the set are returned, not applied."""
    replace = msgspec.structs.replace
    if offset <= state.LastOffset:
        if not isinstance(decoded, Reject) and decoded.Seq > state.LastSeq:
            # New events at old offsets: the topic was recreated or truncated.
            why = ResyncRequired(ResyncReason.OFFSET_RESET, f"offset {offset}")
            return state, [why], []
        return state, [], []  # already applied: exactly-once effect
    if isinstance(decoded, Reject):
        return replace(state, LastOffset=offset), [_rejected(decoded, offset)], []
    if decoded.Seq <= state.LastSeq:
        rejected = Rejected(RejectReason.REPLAY, offset, f"seq {decoded.Seq}")
        return replace(state, LastOffset=offset), [rejected], []
    if decoded.Epoch < state.Epoch:
        rejected = Rejected(RejectReason.OLD_EPOCH, offset, f"epoch {decoded.Epoch}")
        return replace(state, LastOffset=offset), [rejected], []
    effects: list[Effect] = []
    live = mode is ImportMode.LIVE
    if live and state.LastSeq and decoded.Seq != state.LastSeq + 1:
        effects.append(ResyncRequired(ResyncReason.SEQ_GAP, f"{state.LastSeq}->{decoded.Seq}"))
    if live and state.Epoch and decoded.Epoch > max(state.Epoch, state.AnnouncedEpoch):
        effects.append(ResyncRequired(ResyncReason.EPOCH_JUMP, f"epoch {decoded.Epoch}"))
    state = replace(
        state, LastOffset=offset, LastSeq=decoded.Seq, Epoch=decoded.Epoch, LastReceiveAt=now
    )
    changes: list[_Change] = []
    event_effects, state = _dispatch(state, instances, decoded, offset, now, changes)
    effects.extend(event_effects)
    if live and isinstance(decoded, Heartbeat | StreamHead) and decoded.LiveKeys >= 0:
        # Heartbeats and heads change no instance, so the count is the current one.
        count = len(instances)
        if count != decoded.LiveKeys:
            detail = f"peer has {decoded.LiveKeys} live keys, we have {count}"
            effects.append(ResyncRequired(ResyncReason.COUNT_MISMATCH, detail))
    return state, effects, changes


def _dispatch(
    state: ImportState,
    instances: _Instances,
    event: Event | UnknownEvent,
    offset: int,
    now: float,
    changes: list[_Change],
) -> tuple[list[Effect], ImportState]:
    replace = msgspec.structs.replace
    match event:
        case InstanceUpsert():
            changes.append((event.Key, event.Instance))
            return [Upserted(event.Key, event.Instance, event.ChangedAt)], state
        case InstanceRemove():
            if event.Key not in instances:
                return [], state
            changes.append((event.Key, None))
            return [Removed(event.Key, event.ChangedAt)], state
        case Heartbeat():
            state = replace(state, LastHeartbeatAt=now, PeerLiveKeys=event.LiveKeys)
            return [HeartbeatSeen(event.SentAt)], state
        case KeyRotation():
            state = replace(state, AnnouncedEpoch=max(state.AnnouncedEpoch, event.NewEpoch))
            return [RotatedKeys(event.NewEpoch, event.RotationPublicKey)], state
        case StreamHead():
            state = replace(state, PeerLiveKeys=event.LiveKeys)
            retire: list[Effect] = []
            if event.RetireEpochsBelow > 0:
                retire.append(RetireEpochs(event.RetireEpochsBelow))
            return retire, state
        case Terminated():
            return [PeerTerminated(event.Reason)], replace(state, Terminated=True)
        case ResyncRequest():
            return [RepublishRequested(event.Reason)], state
        case UnknownEvent():
            # Authentic but from a newer peer: its Seq is consumed, its content skipped.
            return [Rejected(RejectReason.UNKNOWN_TYPE, offset, event.Type)], state


def _rejected(reject: Reject, offset: int) -> Rejected:
    return Rejected(reject.reason, offset, reject.detail)


Record = tuple[int, bytes | None, bytes | None]
"""(offset, key, value) of one Kafka record, as the consumer hands it over."""


class ReplayStep(msgspec.Struct, frozen=True):
    """One record of an offline replay: what it decoded to and what it did."""

    offset: int
    decoded: Decoded
    effects: list[Effect]
    state: ImportState


def _follow_keys(
    keyring: StreamKeyring,
    effects: list[Effect],
    importer_static_private: bytes,
    mode: ImportMode,
) -> StreamKeyring:
    for effect in effects:
        if isinstance(effect, RotatedKeys):
            keyring = keys.accept_rotation(
                keyring, effect.new_epoch, effect.rotation_public_key, importer_static_private
            )
        elif isinstance(effect, RetireEpochs) and mode is ImportMode.LIVE:
            # A rebuild may still meet older epochs further on; only live use retires.
            keyring = keys.retire_epochs(keyring, effect.below)
    return keyring


def replay(
    records: Iterable[Record],
    keyring: StreamKeyring,
    importer_static_private: bytes,
    now: float,
    state: ImportState | None = None,
    mode: ImportMode = ImportMode.REBUILD,
) -> Iterator[tuple[ReplayStep, StreamKeyring]]:
    """Decode and fold records in offset order, following key rotations on the way; yields
    every step with the keyring for the next record (the ``peering replay`` command)."""
    state = state or ImportState()
    for offset, key, value in records:
        decoded = decode_record(keyring, key, value)
        state, effects = apply(state, offset, decoded, now, mode)
        keyring = _follow_keys(keyring, effects, importer_static_private, mode)
        yield ReplayStep(offset, decoded, effects, state), keyring


class Ingested(msgspec.Struct, frozen=True):
    """Result of ``ingest``: the state and keyring after a batch, and each record's effects."""

    state: ImportState
    keyring: StreamKeyring
    effects: list[tuple[int, list[Effect]]]

    @property
    def rejects(self) -> list[Rejected]:
        return [e for _, effects in self.effects for e in effects if isinstance(e, Rejected)]


def ingest(
    records: Iterable[Record],
    keyring: StreamKeyring,
    importer_static_private: bytes,
    now: float,
    state: ImportState | None = None,
    mode: ImportMode = ImportMode.LIVE,
) -> Ingested:
    """Decode and fold a batch of records (a consumer poll, or a whole topic) in one go.

    Same fold as ``apply``, but the whole batch goes into one mutation of the persistent map
    (in place, cheaper than a new map per record): no intermediate state escapes, and the
    given state keeps its instances. The live loop commits the result and the batch's last
    offset in one SQLite transaction; the keyring is part of that commit when a rotation
    happened.
    """
    state = state or ImportState()
    per_record: list[tuple[int, list[Effect]]] = []
    with _persistent(state.Instances).mutate() as working:
        for offset, key, value in records:
            decoded = decode_record(keyring, key, value)
            state, effects, changes = _fold(state, working, offset, decoded, now, mode)
            _change(working, changes)
            keyring = _follow_keys(keyring, effects, importer_static_private, mode)
            if effects:
                per_record.append((offset, effects))
        state = msgspec.structs.replace(state, Instances=working.finish())
    return Ingested(state=state, keyring=keyring, effects=per_record)


def rebuild(
    records: Iterable[Record],
    keyring: StreamKeyring,
    importer_static_private: bytes,
    now: float,
) -> tuple[ImportState, StreamKeyring, list[Rejected]]:
    """Rebuild a stream's imported set from its (compacted) topic, for an atomic swap."""
    result = ingest(records, keyring, importer_static_private, now, mode=ImportMode.REBUILD)
    return result.state, result.keyring, result.rejects


# ---------------------------------------------------------------------------------------
# Exporter side


class PublisherState(msgspec.Struct, frozen=True, kw_only=True):
    """What the exporter last published on one stream; persisted after the broker acked."""

    Epoch: int = keys.FIRST_EPOCH
    NextSeq: int = 1
    # Key -> fingerprint, a persistent map for the same reason as ImportState.Instances (the
    # store keeps it in its own table, so it is never encoded).
    Published: Mapping[str, str] = msgspec.field(default_factory=immutables.Map)


_DETERMINISTIC = msgspec.json.Encoder(order="deterministic")


def fingerprint(instance: ServiceInstance) -> str:
    """A stable digest of an instance's content (Meta order does not matter)."""
    return hashlib.sha256(_DETERMINISTIC.encode(instance)).hexdigest()[:32]


def reconcile(
    state: PublisherState,
    desired: Mapping[str, ServiceInstance],
    now: float,
    *,
    head_reason: str = "",
) -> tuple[PublisherState, list[Event]]:
    """Events that bring the stream from ``state.Published`` to ``desired`` (keyed by
    events.instance_key). With ``head_reason``, a StreamHead closes the batch."""
    # The same events as a feed batch holding every desired instance, then a removal of each
    # published key no longer desired: publish_changes skips what is already published.
    gone = sorted(key for key in state.Published if key not in desired)
    changes: list[tuple[str, ServiceInstance | None, float]] = [
        (key, desired[key], now) for key in sorted(desired)
    ]
    changes += [(key, None, now) for key in gone]
    state, events = publish_changes(state, changes, now)
    if head_reason:
        head = StreamHead(
            Epoch=state.Epoch,
            Seq=state.NextSeq,
            SentAt=now,
            LiveKeys=len(state.Published),
            Reason=head_reason,
        )
        events.append(head)
        state = msgspec.structs.replace(state, NextSeq=state.NextSeq + 1)
    return state, events


def republish_all(
    state: PublisherState,
    desired: Mapping[str, ServiceInstance],
    now: float,
    reason: str,
    retire_epochs_below: int = 0,
) -> tuple[PublisherState, list[Event]]:
    """Full republish (topic lost records, or after a rotation), closed by a StreamHead.
    Keys published before but no longer desired are removed too."""
    forgotten = immutables.Map((key, "") for key in state.Published)
    fresh = msgspec.structs.replace(state, Published=forgotten)
    state, events = reconcile(fresh, desired, now, head_reason=reason)
    if retire_epochs_below and events and isinstance(events[-1], StreamHead):
        events[-1] = msgspec.structs.replace(events[-1], RetireEpochsBelow=retire_epochs_below)
    return state, events


SEQ_BLOCK = 1000
"""Seqs reserved per durable write: one fsync per this many events instead of one per batch."""


def seq_ceiling_for(ceiling: int, before: PublisherState, after: PublisherState) -> int | None:
    """The Seq ceiling to persist durably *before* producing the events that lead from
    ``before`` to ``after``, or None when they use no Seq or the persisted ceiling covers them.

    Every Seq below the persisted ceiling counts as used: a restart resumes at it
    (``resume_publisher``), so a crash after producing but before the bookkeeping never
    reuses a Seq (the importer would drop the new event as a replay), while fingerprints are
    recorded only after the broker acked, so an unsent change is never marked as published
    (reconcile sends it again after restart). Reserving a block at a time takes the fsync off
    the per-change path; the price is that a crash skips the rest of the block, which the
    importer sees as a Seq gap and resyncs from the compacted topic (harmless).
    """
    if after.NextSeq == before.NextSeq or after.NextSeq <= ceiling:
        return None
    return after.NextSeq + SEQ_BLOCK


def resume_publisher(state: PublisherState, ceiling: int) -> PublisherState:
    """The state to continue from after a restart: never below the persisted ceiling."""
    return msgspec.structs.replace(state, NextSeq=max(state.NextSeq, ceiling))


class CaughtUp(msgspec.Struct, frozen=True):
    """The publisher state after reading its own topic past its cursor (``catch_up``)."""

    State: PublisherState
    # Highest Seq found on the topic (0: none), and records under an epoch the keyring lacks.
    LastSeq: int = 0
    Unreadable: int = 0


def catch_up(
    state: PublisherState,
    keyring: StreamKeyring,
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> CaughtUp:
    """Fold the exporter's own records (key, value) that lie past what its cursor knows into
    its state: Seqs continue after the highest one on the topic, and the published
    fingerprints become what the topic actually carries for the keys these records touch.

    The cursor lags the topic after a crash before the post-acknowledgement save (harmless
    before: the restart resumed at the Seq ceiling) and after the data dir was restored from
    an older backup: its Seqs are then ones the peer has already seen and drops as replays,
    and its fingerprints describe values the peer no longer has, so reconcile would leave
    the peer's newer values (and keys published since the backup) in place.
    """
    mutation = _persistent(state.Published).mutate()
    last_seq = 0
    unreadable = 0
    for key, value in records:
        decoded = decode_record(keyring, key, value)
        if isinstance(decoded, Reject):
            # Ours under an epoch we no longer hold: a rotation newer than this state. Other
            # rejects are compaction's tombstones or records we never wrote (the broker is
            # untrusted); the importer drops those too.
            unreadable += decoded.reason is RejectReason.UNKNOWN_EPOCH
            continue
        last_seq = max(last_seq, decoded.Seq)
        if isinstance(decoded, InstanceUpsert):
            mutation[decoded.Key] = fingerprint(decoded.Instance)
        elif isinstance(decoded, InstanceRemove):
            mutation.pop(decoded.Key, None)
    next_seq = max(state.NextSeq, last_seq + 1)
    caught_up = msgspec.structs.replace(state, NextSeq=next_seq, Published=mutation.finish())
    return CaughtUp(caught_up, last_seq, unreadable)


def heartbeat(state: PublisherState, now: float) -> tuple[PublisherState, Heartbeat]:
    """The next heartbeat, carrying the exporter's live key count."""
    event = Heartbeat(
        Epoch=state.Epoch, Seq=state.NextSeq, SentAt=now, LiveKeys=len(state.Published)
    )
    return msgspec.structs.replace(state, NextSeq=state.NextSeq + 1), event


def terminate(state: PublisherState, now: float, reason: str) -> tuple[PublisherState, Terminated]:
    """The Terminated event that tells the importer the peering was deleted."""
    event = Terminated(Epoch=state.Epoch, Seq=state.NextSeq, SentAt=now, Reason=reason)
    return msgspec.structs.replace(state, NextSeq=state.NextSeq + 1), event


def request_resync(
    state: PublisherState, now: float, reason: str
) -> tuple[PublisherState, ResyncRequest]:
    """Ask the peer to republish the stream we import (sent on the stream we export)."""
    event = ResyncRequest(Epoch=state.Epoch, Seq=state.NextSeq, SentAt=now, Reason=reason)
    return msgspec.structs.replace(state, NextSeq=state.NextSeq + 1), event


def rotate(
    state: PublisherState,
    keyring: StreamKeyring,
    importer_static_public: bytes,
    now: float,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> tuple[PublisherState, StreamKeyring, KeyRotation]:
    """Start a key rotation: the KeyRotation event (under the current epoch) and the new
    keyring/state at epoch+1. Follow with ``republish_all(..., retire_epochs_below=new)``."""
    rotated, rotation_public = keys.begin_rotation(keyring, importer_static_public, random_bytes)
    event = KeyRotation(
        Epoch=state.Epoch,
        Seq=state.NextSeq,
        SentAt=now,
        NewEpoch=rotated.CurrentEpoch,
        RotationPublicKey=rotation_public,
    )
    new_state = msgspec.structs.replace(
        state, Epoch=rotated.CurrentEpoch, NextSeq=state.NextSeq + 1
    )
    return new_state, rotated, event


def publish_changes(
    state: PublisherState,
    changes: Iterable[tuple[str, ServiceInstance | None, float]],
    now: float,
) -> tuple[PublisherState, list[Event]]:
    """Events for a batch of exported-view changes ``(key, instance or None, changed_at)``,
    in feed order. Bursts on one key coalesce to its last value (compaction would keep only
    that one anyway), and a change that does not alter what was published sends nothing."""
    latest: dict[str, tuple[ServiceInstance | None, float]] = {}
    for key, instance, changed_at in changes:
        latest.pop(key, None)  # re-insert so the key takes its newest position in the order
        latest[key] = (instance, changed_at)
    seq = state.NextSeq
    events: list[Event] = []
    # O(changes · log n): the previous state's map is shared, not copied.
    with _persistent(state.Published).mutate() as published:
        for key, (instance, changed_at) in latest.items():
            if instance is None:
                if key not in published:
                    continue
                del published[key]
                events.append(
                    InstanceRemove(
                        Epoch=state.Epoch, Seq=seq, SentAt=now, Key=key, ChangedAt=changed_at
                    )
                )
            else:
                digest = fingerprint(instance)
                if published.get(key) == digest:
                    continue
                published[key] = digest
                events.append(
                    InstanceUpsert(
                        Epoch=state.Epoch,
                        Seq=seq,
                        SentAt=now,
                        Key=key,
                        Instance=instance,
                        ChangedAt=changed_at,
                    )
                )
            seq += 1
        new_published = published.finish()
    return msgspec.structs.replace(state, NextSeq=seq, Published=new_published), events
