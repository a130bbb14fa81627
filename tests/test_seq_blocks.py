"""Seq blocks on real agents and a real broker: the exporter reserves Seqs durably a block at
a time, so a change costs no fsync of its own, and still never reuses a Seq across a crash.

- between blocks the persisted ceiling does not move while changes flow;
- a clean stop gives the rest of the block back: the restart continues without a gap and
  the peer never resyncs;
- a SIGKILL keeps the block: the restart resumes above it, the peer resyncs once on the gap
  and converges, and no Seq appears twice on the wire.
"""

from __future__ import annotations

import sqlite3
import time

import anyio
import msgspec

from agent import kafka_client, reducer, topics
from agent.devbroker import DevBroker
from agent.peering.records import PeeringRecord
from agent.store import DB_FILE
from agent.wire.envelope import Reject
from agent.wire.events import UnknownEvent
from agent.wire.keys import Direction
from tests.acceptance_helpers import (
    AgentFactory,
    converged,
    metric,
    peered_pair,
    peering,
    persisted_import,
)
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import export, register, wait_for


def _publisher_row(agent: AgentProcess, peer_name: str) -> tuple[int, int]:
    """(NextSeq after the last acked batch, persisted Seq ceiling) of the stream to a peer."""
    conn = sqlite3.connect(f"file:{agent.data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        body = conn.execute("SELECT body FROM peerings WHERE name = ?", (peer_name,)).fetchone()
        peering_id = msgspec.json.decode(body[0], type=PeeringRecord).ID
        next_seq = conn.execute(
            "SELECT next_seq FROM publisher WHERE peering_id = ?", (peering_id,)
        ).fetchone()[0]
        ceiling = conn.execute(
            "SELECT ceiling FROM publisher_seq_ceiling WHERE peering_id = ?", (peering_id,)
        ).fetchone()[0]
    finally:
        conn.close()
    return int(next_seq), int(ceiling)


def _seqs_on_the_wire(bootstrap: str, importer: AgentProcess, exporter: AgentProcess) -> list[int]:
    """Every Seq of the exporter's stream in offset order, decoded with the importer's keys."""
    topic = topics.stream_topic(
        peering(exporter, importer.name)["ID"], Direction.ACCEPTOR_TO_DIALER
    )
    persisted = persisted_import(importer, exporter.name)

    async def read() -> list[kafka_client.Record]:
        return [r async for r in kafka_client.read_partition(bootstrap, topic)]

    steps = reducer.replay(
        [(r.offset, r.key, r.value) for r in anyio.run(read)],
        persisted.keyring,
        persisted.record.PrivateKey,
        time.time(),
    )
    return [
        step.decoded.Seq
        for step, _keyring in steps
        if not isinstance(step.decoded, Reject | UnknownEvent)
    ]


def _pair(kafka: DevBroker, agent_factory: AgentFactory) -> tuple[AgentProcess, AgentProcess]:
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "pay-0", "pay", 9000)
    export(east, {"pay": ["west"]})
    wait_for("pay on west", lambda: converged(east, west, "pay"))
    return east, west


def test_changes_inside_a_block_do_not_move_the_ceiling(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    east, west = _pair(kafka, agent_factory)
    next_seq, ceiling = _publisher_row(east, "west")
    assert next_seq < ceiling <= next_seq + reducer.SEQ_BLOCK
    for n in range(20):
        register(east, "pay-0", "pay", 9100 + n)
    wait_for("last change on west", lambda: converged(east, west, "pay"))
    wait_for("bookkeeping saved", lambda: _publisher_row(east, "west")[0] >= next_seq + 20)
    assert _publisher_row(east, "west")[1] == ceiling  # no new reservation: no fsync per change


def test_clean_restart_continues_without_a_gap(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    east, west = _pair(kafka, agent_factory)
    east.stop()
    next_seq, ceiling = _publisher_row(east, "west")
    assert ceiling == next_seq  # the unused rest of the block was given back
    east.restart()
    register(east, "pay-1", "pay", 9001)
    wait_for("pay-1 on west", lambda: converged(east, west, "pay"))
    seqs = _seqs_on_the_wire(kafka.bootstrap, west, east)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous: no gap
    assert metric(west, "peering_resyncs_total", peer="east") == 0


def test_sigkill_resumes_above_the_block_and_reuses_no_seq(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    east, west = _pair(kafka, agent_factory)
    _next_seq, ceiling = _publisher_row(east, "west")
    east.kill()
    east.restart()
    register(east, "pay-1", "pay", 9001)
    wait_for("pay-1 on west", lambda: converged(east, west, "pay"), timeout=40)
    seqs = _seqs_on_the_wire(kafka.bootstrap, west, east)
    assert seqs == sorted(set(seqs)), "a Seq appears twice or out of order on the wire"
    assert [s for s in seqs if s >= ceiling], "the restart resumed above the reserved block"
    wait_for(
        "west resynced on the gap",
        lambda: metric(west, "peering_resyncs_total", peer="east", reason="seq_gap") >= 1,
    )
    assert metric(west, "peering_records_rejected_total", peer="east") == 0
