"""The pure peering lifecycle state machine and health."""

from __future__ import annotations

import pytest

from agent.peering_state import (
    Action,
    DeleteRequested,
    EstablishStarted,
    EstablishTimedOut,
    HandshakeAccepted,
    HandshakeRefused,
    PeeringState,
    PeeringStatus,
    PeerTerminated,
    RecordReceived,
    RecordSent,
    Tick,
    TokenGenerated,
    TopicsRemoved,
    health,
    new_acceptor_peering,
    new_dialer_peering,
    step,
)
from agent.wire.errors import InvalidTransition

T0 = 1000.0
HB = 1.0


def active(role: str = "acceptor") -> PeeringStatus:
    """An ACTIVE peering (acceptor or dialer side) that became active at T0."""
    if role == "acceptor":
        status = new_acceptor_peering("beta", T0, heartbeat_interval=HB, delete_grace=10)
    else:
        status = new_dialer_peering("alpha", T0, heartbeat_interval=HB, delete_grace=10)
    status, _ = step(status, HandshakeAccepted(T0))
    return status


def test_acceptor_goes_pending_to_active() -> None:
    """Acceptor: PENDING, token regenerated, then ACTIVE with streams started."""
    status = new_acceptor_peering("beta", T0)
    assert status.State is PeeringState.PENDING
    assert step(status, TokenGenerated(T0 + 1)) == (status, [])
    status, actions = step(status, HandshakeAccepted(T0 + 2))
    assert status.State is PeeringState.ACTIVE
    assert actions == [Action.START_STREAMS, Action.SEND_HEARTBEAT]


def test_dialer_goes_establishing_to_active() -> None:
    """Dialer: ESTABLISHING sends the request, then ACTIVE and reports success."""
    status = new_dialer_peering("alpha", T0)
    assert step(status, EstablishStarted(T0))[1] == [Action.SEND_ESTABLISH_REQUEST]
    status, actions = step(status, HandshakeAccepted(T0 + 1))
    assert status.State is PeeringState.ACTIVE
    assert actions[0] is Action.REPORT_ESTABLISHED


def test_refused_or_timed_out_establish_is_reported_and_forgotten() -> None:
    """A refusal or timeout reports the failure and forgets the dialer's peering."""
    status = new_dialer_peering("alpha", T0)
    refused, actions = step(status, HandshakeRefused(T0, "reused", "already used"))
    assert refused.Reason == "reused"
    assert actions == [Action.REPORT_ESTABLISH_FAILED, Action.FORGET_PEERING]
    timed_out, actions = step(status, EstablishTimedOut(T0 + 30))
    assert timed_out.Reason == "timeout"
    assert Action.REPORT_ESTABLISH_FAILED in actions


def test_failing_after_three_missed_heartbeats_and_back() -> None:
    """No record for 3 intervals: FAILING (imports stale); next record: ACTIVE again."""
    status = active()
    status, actions = step(status, Tick(T0 + 3 * HB))
    assert status.State is PeeringState.ACTIVE
    status, actions = step(status, Tick(T0 + 3 * HB + 0.1))
    assert status.State is PeeringState.FAILING
    assert actions[0] is Action.MARK_IMPORTS_STALE
    status, actions = step(status, RecordReceived(T0 + 5, heartbeat=True))
    assert status.State is PeeringState.ACTIVE
    assert actions == [Action.MARK_IMPORTS_FRESH]
    assert status.LastHeartbeat == T0 + 5


def test_records_keep_the_peering_active() -> None:
    """Regular records keep ACTIVE however long the peering lives."""
    status = active()
    for second in range(1, 20):
        status, _ = step(status, RecordReceived(T0 + second))
        status, _ = step(status, Tick(T0 + second + 0.5))
    assert status.State is PeeringState.ACTIVE


def test_tick_asks_for_heartbeats_when_due() -> None:
    """Tick yields SEND_HEARTBEAT once an interval passed since the last send."""
    status = active()
    assert step(status, Tick(T0 + 0.5))[1] == []
    assert step(status, Tick(T0 + HB))[1] == [Action.SEND_HEARTBEAT]
    status, _ = step(status, RecordSent(T0 + HB))
    assert step(status, Tick(T0 + HB + 0.5))[1] == []


def test_local_delete_tells_the_peer_and_removes_topics_after_grace() -> None:
    """Delete while ACTIVE: send Terminated, remove imports, topics after grace, forget."""
    status, actions = step(active(), DeleteRequested(T0 + 1))
    assert status.State is PeeringState.DELETING
    assert actions == [
        Action.SEND_TERMINATED,
        Action.STOP_EXPORTING,
        Action.REMOVE_IMPORTED_SERVICES,
    ]
    assert step(status, DeleteRequested(T0 + 2)) == (status, [])
    assert step(status, Tick(T0 + 5))[1] == []
    assert step(status, Tick(T0 + 11))[1] == [Action.REMOVE_STREAM_TOPICS]
    status, actions = step(status, TopicsRemoved(T0 + 12))
    assert actions == [Action.FORGET_PEERING]
    assert step(status, Tick(T0 + 20))[1] == []


def test_delete_of_pending_peering_is_forgotten_at_once() -> None:
    """Deleting a PENDING peering (no streams yet) forgets it without a grace."""
    status, actions = step(new_acceptor_peering("beta", T0), DeleteRequested(T0))
    assert status.State is PeeringState.DELETING
    assert actions == [Action.FORGET_PEERING]


def test_peer_deletion_terminates() -> None:
    """A Terminated record from the peer: TERMINATED, imports removed, export stopped."""
    status, actions = step(active("dialer"), PeerTerminated(T0 + 1, "deleted"))
    assert status.State is PeeringState.TERMINATED
    assert status.Reason == "deleted"
    assert set(actions) == {Action.STOP_EXPORTING, Action.REMOVE_IMPORTED_SERVICES}
    assert step(status, PeerTerminated(T0 + 2)) == (status, [])
    assert step(status, RecordReceived(T0 + 3)) == (status, [])
    deleting, actions = step(status, DeleteRequested(T0 + 4))
    assert deleting.State is PeeringState.DELETING
    assert actions == []


@pytest.mark.parametrize(
    ("status", "event"),
    [
        (new_acceptor_peering("b", T0), EstablishStarted(T0)),
        (new_dialer_peering("a", T0), TokenGenerated(T0)),
        (new_acceptor_peering("b", T0), HandshakeRefused(T0, "x", "y")),
        (new_acceptor_peering("b", T0), PeerTerminated(T0)),
        (new_acceptor_peering("b", T0), TopicsRemoved(T0)),
    ],
    ids=[
        "establish-on-acceptor",
        "token-on-dialer",
        "refused-pending",
        "terminated-pending",
        "topics",
    ],
)
def test_invalid_transitions_raise(status: PeeringStatus, event: object) -> None:
    """Inputs a state does not allow raise InvalidTransition naming state and input."""
    with pytest.raises(InvalidTransition, match="not allowed"):
        step(status, event)  # type: ignore[arg-type]


def test_active_peering_cannot_be_established_again() -> None:
    """EstablishStarted on an ACTIVE peering is an InvalidTransition (HTTP 409 upstream)."""
    with pytest.raises(InvalidTransition, match="ACTIVE"):
        step(active(), EstablishStarted(T0))


def test_health_is_a_pure_function_of_status_and_now() -> None:
    """health() reports FAILING/stale for an overdue ACTIVE peering even before a Tick."""
    status = active()
    fresh = health(status, T0 + 1)
    assert fresh.State is PeeringState.ACTIVE
    assert fresh.Healthy
    assert not fresh.ImportsStale
    late = health(status, T0 + 10)
    assert late.State is PeeringState.FAILING
    assert late.ImportsStale
    assert not late.Healthy
    assert late.SecondsSinceReceive == 10
    assert health(new_acceptor_peering("b", T0), T0).SecondsSinceReceive is None
