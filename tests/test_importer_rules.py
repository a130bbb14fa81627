"""The importer's rules for a poll, on real records folded by the pure reducer."""

from __future__ import annotations

from agent import reducer
from agent.peering.importer import resync_needed
from agent.reducer import PublisherState, ResyncReason, heartbeat, resume_publisher, terminate
from tests.test_reducer import Topic
from tests.wire_helpers import NOW, Established


def _poll(
    topic: Topic, peers: Established, state: reducer.ImportState, start: int = 0
) -> reducer.Ingested:
    """One consumer poll of the topic's records from offset ``start``."""
    records = topic.records[start:]
    return reducer.ingest(records, topic.keyring, peers.dialer_private, NOW, state)


def test_a_gap_asks_for_a_resync() -> None:
    peers = Established()
    topic = Topic(peers.a2d)
    pub, beat = heartbeat(PublisherState(), NOW)
    topic.publish([beat])
    first = _poll(topic, peers, reducer.ImportState())
    _, skipped = heartbeat(resume_publisher(pub, 1000), NOW)  # a crash skipped a Seq block
    topic.publish([skipped])
    why = resync_needed(_poll(topic, peers, first.state, start=1).effects)
    assert why is not None
    assert why.why is ResyncReason.SEQ_GAP


def test_a_terminated_after_a_gap_ends_the_stream_instead_of_a_resync() -> None:
    """The peering being deleted stops the exporter with a Seq block reserved, so its
    Terminated follows a gap; a resync would swallow it and the peer would never learn."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, beat = heartbeat(PublisherState(), NOW)
    topic.publish([beat])
    first = _poll(topic, peers, reducer.ImportState())
    _, last = terminate(resume_publisher(pub, 1000), NOW, "deleted by the peer")
    topic.publish([last])
    ingested = _poll(topic, peers, first.state, start=1)
    assert any(isinstance(e, reducer.ResyncRequired) for _, es in ingested.effects for e in es)
    assert resync_needed(ingested.effects) is None
    assert any(isinstance(e, reducer.PeerTerminated) for _, es in ingested.effects for e in es)
