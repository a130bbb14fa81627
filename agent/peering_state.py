"""The peering lifecycle as a pure state machine (Consul's states, promise 6 and 7).

``step(status, event) -> (status, actions)``: inputs are plain values with an injected
``now``; actions are plain values the shell carries out (send, start streams, remove
imports, ...). Nothing here touches Kafka, SQLite or a clock.

    acceptor: PENDING ──HandshakeAccepted──▶ ACTIVE ◀──RecordReceived── FAILING
    dialer:   ESTABLISHING ──HandshakeAccepted──▶ ACTIVE ──Tick(3 missed)──▶ FAILING
    ACTIVE/FAILING ──PeerTerminated──▶ TERMINATED
    any ──DeleteRequested──▶ DELETING ──(grace) RemoveStreamTopics … TopicsRemoved──▶ forgotten
"""

from __future__ import annotations

import enum

import msgspec

from agent.wire.errors import InvalidTransition

DEFAULT_HEARTBEAT_INTERVAL = 5.0
MISSED_HEARTBEATS_FOR_FAILING = 3
DEFAULT_DELETE_GRACE = 30.0


class PeeringState(enum.StrEnum):
    PENDING = "PENDING"
    ESTABLISHING = "ESTABLISHING"
    ACTIVE = "ACTIVE"
    FAILING = "FAILING"
    DELETING = "DELETING"
    TERMINATED = "TERMINATED"


class Role(enum.StrEnum):
    ACCEPTOR = "acceptor"
    DIALER = "dialer"


class PeeringStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The lifecycle status of one peering; the shell persists it."""

    Name: str
    PeerRole: Role
    State: PeeringState
    StateSince: float
    HeartbeatInterval: float = DEFAULT_HEARTBEAT_INTERVAL
    DeleteGrace: float = DEFAULT_DELETE_GRACE
    LastReceive: float = 0.0
    LastHeartbeat: float = 0.0
    LastSend: float = 0.0
    HadStreams: bool = False
    DeleteRequestedAt: float = 0.0
    TopicsRemoved: bool = False
    Reason: str = ""


# Inputs ---------------------------------------------------------------------------------


class TokenGenerated(msgspec.Struct, frozen=True):
    now: float


class EstablishStarted(msgspec.Struct, frozen=True):
    now: float


class HandshakeAccepted(msgspec.Struct, frozen=True):
    now: float


class HandshakeRefused(msgspec.Struct, frozen=True):
    now: float
    reason: str
    message: str


class EstablishTimedOut(msgspec.Struct, frozen=True):
    now: float


class RecordReceived(msgspec.Struct, frozen=True):
    now: float
    heartbeat: bool = False


class RecordSent(msgspec.Struct, frozen=True):
    now: float


class Tick(msgspec.Struct, frozen=True):
    now: float


class DeleteRequested(msgspec.Struct, frozen=True):
    now: float


class PeerTerminated(msgspec.Struct, frozen=True):
    now: float
    reason: str = ""


class TopicsRemoved(msgspec.Struct, frozen=True):
    now: float


Input = (
    TokenGenerated
    | EstablishStarted
    | HandshakeAccepted
    | HandshakeRefused
    | EstablishTimedOut
    | RecordReceived
    | RecordSent
    | Tick
    | DeleteRequested
    | PeerTerminated
    | TopicsRemoved
)

# Actions --------------------------------------------------------------------------------


class Action(enum.StrEnum):
    """What the shell must do; parameters come from the status (e.g. Reason)."""

    SEND_ESTABLISH_REQUEST = "send_establish_request"
    REPORT_ESTABLISHED = "report_established"
    REPORT_ESTABLISH_FAILED = "report_establish_failed"
    START_STREAMS = "start_streams"
    SEND_HEARTBEAT = "send_heartbeat"
    MARK_IMPORTS_STALE = "mark_imports_stale"
    MARK_IMPORTS_FRESH = "mark_imports_fresh"
    SEND_TERMINATED = "send_terminated"
    STOP_EXPORTING = "stop_exporting"
    REMOVE_IMPORTED_SERVICES = "remove_imported_services"
    REMOVE_STREAM_TOPICS = "remove_stream_topics"
    FORGET_PEERING = "forget_peering"


S = PeeringState
_STREAMING = frozenset({S.ACTIVE, S.FAILING})


def new_acceptor_peering(
    name: str,
    now: float,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    delete_grace: float = DEFAULT_DELETE_GRACE,
) -> PeeringStatus:
    """A peering created by generating a token: PENDING until a dialer is accepted."""
    return PeeringStatus(
        Name=name,
        PeerRole=Role.ACCEPTOR,
        State=S.PENDING,
        StateSince=now,
        HeartbeatInterval=heartbeat_interval,
        DeleteGrace=delete_grace,
    )


def new_dialer_peering(
    name: str,
    now: float,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    delete_grace: float = DEFAULT_DELETE_GRACE,
) -> PeeringStatus:
    """A peering created by an establish call: ESTABLISHING until the acceptor answers."""
    return PeeringStatus(
        Name=name,
        PeerRole=Role.DIALER,
        State=S.ESTABLISHING,
        StateSince=now,
        HeartbeatInterval=heartbeat_interval,
        DeleteGrace=delete_grace,
    )


def _invalid(status: PeeringStatus, event: Input) -> InvalidTransition:
    return InvalidTransition(
        f"peering {status.Name!r} is {status.State}: {type(event).__name__} is not allowed"
    )


def _to(status: PeeringStatus, state: PeeringState, now: float, **changes: object) -> PeeringStatus:
    return msgspec.structs.replace(status, State=state, StateSince=now, **changes)


def step(status: PeeringStatus, event: Input) -> tuple[PeeringStatus, list[Action]]:
    """Apply one input. Raises InvalidTransition when the state does not allow it."""
    replace = msgspec.structs.replace
    state = status.State
    match event:
        case TokenGenerated() if state is S.PENDING:
            return status, []  # the shell revokes the previous token of this peer
        case EstablishStarted() if state is S.ESTABLISHING:
            return status, [Action.SEND_ESTABLISH_REQUEST]
        case HandshakeAccepted(now) if state in (S.PENDING, S.ESTABLISHING):
            actions = [Action.START_STREAMS, Action.SEND_HEARTBEAT]
            if status.PeerRole is Role.DIALER:
                actions.insert(0, Action.REPORT_ESTABLISHED)
            new = _to(status, S.ACTIVE, now, HadStreams=True, LastReceive=now, LastSend=now)
            return new, actions
        case HandshakeAccepted() if state in _STREAMING:
            return status, []  # a retransmitted answer
        case HandshakeRefused(now, reason) if state is S.ESTABLISHING:
            new = _to(status, S.DELETING, now, Reason=reason, DeleteRequestedAt=now)
            return new, [Action.REPORT_ESTABLISH_FAILED, Action.FORGET_PEERING]
        case EstablishTimedOut(now) if state is S.ESTABLISHING:
            new = _to(status, S.DELETING, now, Reason="timeout", DeleteRequestedAt=now)
            return new, [Action.REPORT_ESTABLISH_FAILED, Action.FORGET_PEERING]
        case RecordReceived(now, is_heartbeat):
            return _received(status, now, is_heartbeat)
        case RecordSent(now):
            if state in _STREAMING:
                return replace(status, LastSend=max(status.LastSend, now)), []
            return status, []
        case Tick(now):
            return _tick(status, now)
        case DeleteRequested(now):
            return _delete(status, now)
        case PeerTerminated(now, reason) if state in _STREAMING:
            new = _to(status, S.TERMINATED, now, Reason=reason or "deleted by the peer")
            return new, [Action.STOP_EXPORTING, Action.REMOVE_IMPORTED_SERVICES]
        case PeerTerminated() if state in (S.TERMINATED, S.DELETING):
            return status, []  # both sides deleted, or a repeated Terminated record
        case TopicsRemoved() if state is S.DELETING:
            return replace(status, TopicsRemoved=True), [Action.FORGET_PEERING]
    raise _invalid(status, event)


def _received(
    status: PeeringStatus, now: float, is_heartbeat: bool
) -> tuple[PeeringStatus, list[Action]]:
    if status.State not in _STREAMING:
        return status, []  # records in flight while deleting or terminated change nothing
    changes: dict[str, object] = {"LastReceive": max(status.LastReceive, now)}
    if is_heartbeat:
        changes["LastHeartbeat"] = max(status.LastHeartbeat, now)
    if status.State is S.FAILING:
        return _to(status, S.ACTIVE, now, **changes), [Action.MARK_IMPORTS_FRESH]
    return msgspec.structs.replace(status, **changes), []


def _tick(status: PeeringStatus, now: float) -> tuple[PeeringStatus, list[Action]]:
    actions: list[Action] = []
    if status.State in _STREAMING:
        if now - status.LastSend >= status.HeartbeatInterval:
            actions.append(Action.SEND_HEARTBEAT)
        if status.State is S.ACTIVE and _overdue(status, now):
            return _to(status, S.FAILING, now), [Action.MARK_IMPORTS_STALE, *actions]
        return status, actions
    if status.State is S.DELETING and not status.TopicsRemoved:
        if not status.HadStreams:
            return status, [Action.FORGET_PEERING]
        if now >= status.DeleteRequestedAt + status.DeleteGrace:
            return status, [Action.REMOVE_STREAM_TOPICS]
    return status, []


def _delete(status: PeeringStatus, now: float) -> tuple[PeeringStatus, list[Action]]:
    if status.State is S.DELETING:
        return status, []  # a repeated DELETE
    actions: list[Action] = []
    if status.State in _STREAMING:
        actions = [Action.SEND_TERMINATED, Action.STOP_EXPORTING, Action.REMOVE_IMPORTED_SERVICES]
    elif not status.HadStreams:
        actions = [Action.FORGET_PEERING]
    new = _to(status, S.DELETING, now, DeleteRequestedAt=now, Reason="deleted locally")
    return new, actions


def _overdue(status: PeeringStatus, now: float) -> bool:
    limit = MISSED_HEARTBEATS_FOR_FAILING * status.HeartbeatInterval
    return now - max(status.LastReceive, status.StateSince) > limit


class PeeringHealth(msgspec.Struct, frozen=True):
    """What the API and metrics show, computed from (status, now) alone."""

    State: PeeringState
    Healthy: bool
    ImportsStale: bool
    SecondsSinceReceive: float | None


def health(status: PeeringStatus, now: float) -> PeeringHealth:
    """Health at ``now``: an ACTIVE peering that missed 3 heartbeats already shows FAILING,
    even before the next Tick reaches the state machine."""
    state = status.State
    if state is S.ACTIVE and _overdue(status, now):
        state = S.FAILING
    since = now - status.LastReceive if status.LastReceive else None
    return PeeringHealth(
        State=state,
        Healthy=state is S.ACTIVE,
        ImportsStale=state is S.FAILING,
        SecondsSinceReceive=since,
    )
