"""Isolation on one shared broker: a third cluster learns and changes nothing of another
peering, records of another peering are refused, and a deleted peering's keys stay dead."""

from __future__ import annotations

import anyio
import httpx

from agent import kafka_client, topics
from agent.devbroker import DevBroker
from agent.wire.keys import Direction
from tests.acceptance_helpers import (
    AgentFactory,
    active,
    establish,
    metric,
    peered_pair,
    peering,
    token_for,
    view,
)
from tests.agent_fixtures import AgentProcess
from tests.faults.convergence import differences
from tests.peering_helpers import FAST_ENV, export, peer, register, state, wait_for


def _records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    async def read() -> list[kafka_client.Record]:
        with anyio.fail_after(20):
            return [r async for r in kafka_client.read_partition(bootstrap, topic)]

    return [(r.key, r.value) for r in anyio.run(read) if r.key and r.value]


def _inject(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    async def produce() -> None:
        with anyio.fail_after(20):
            async with kafka_client.producer(bootstrap) as producer:
                for key, value in records:
                    await producer.send_and_wait(topic, value=value, key=key)

    anyio.run(produce)


def _stream(acceptor: AgentProcess, peer_name: str) -> str:
    return topics.stream_topic(peering(acceptor, peer_name)["ID"], Direction.ACCEPTOR_TO_DIALER)


def test_third_cluster_and_other_peerings_records_change_nothing(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """north (peered with east only) sees none of east->west; its stream replayed into
    west's is refused; a token meant for another cluster does not let north in."""
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    north = agent_factory(name="north", kafka=kafka.bootstrap, env=FAST_ENV)
    peer(east, west)
    register(east, "vault-1", "vault", 8200)
    register(east, "open-1", "open", 8300)
    export(east, {"vault": ["west"], "open": ["west", "north"]})
    # north has no peering with east yet: a token meant for another cluster does not work.
    refused = establish(north, "east", token_for(east, "south"))
    assert refused.status_code == 403, refused.text
    assert state(north, "east") is None
    peer(east, north)
    wait_for("west converged", lambda: not differences(east, west))
    wait_for("north converged", lambda: not differences(east, north))
    served = httpx.get(f"{north.url}/v1/catalog/services", params={"peer": "east"}, timeout=5)
    assert set(served.json()) == {"open"}
    assert view(north, "vault", "east") == {}

    # north's own stream from east, replayed into east->west, is another peering's: refused.
    before = view(west, "vault", "east"), view(west, "open", "east")
    rejected = metric(west, "peering_records_rejected_total", peer="east")
    foreign = _records(kafka.bootstrap, _stream(east, "north"))
    assert foreign
    _inject(kafka.bootstrap, _stream(east, "west"), foreign)
    wait_for(
        "every foreign record refused",
        lambda: (
            metric(west, "peering_records_rejected_total", peer="east") >= rejected + len(foreign)
        ),
    )
    assert (view(west, "vault", "east"), view(west, "open", "east")) == before
    assert active(west, "east")
    assert active(east, "west")


def test_deleted_peerings_old_keys_are_refused(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Delete and re-peer: records sealed with the old peering's keys are refused."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "web-1", "web", 8080)
    export(east, {"web": ["west"]})
    wait_for("converged", lambda: not differences(east, west))
    old_id = peering(east, "west")["ID"]
    old = _records(kafka.bootstrap, _stream(east, "west"))
    assert old

    deleted = httpx.delete(f"{west.url}/v1/peering/east", timeout=10)
    assert deleted.status_code == 200, deleted.text
    wait_for("east forgot or TERMINATED", lambda: state(east, "west") in (None, "TERMINATED"))
    wait_for("west forgot", lambda: state(west, "east") in (None, "TERMINATED"))
    if state(east, "west") is not None:
        assert httpx.delete(f"{east.url}/v1/peering/west", timeout=10).status_code == 200
        wait_for("east gone", lambda: state(east, "west") is None)
    wait_for("west gone", lambda: state(west, "east") is None, timeout=30)
    peer(east, west)
    assert peering(east, "west")["ID"] != old_id
    register(east, "web-2", "web", 8081)
    wait_for("converged again", lambda: not differences(east, west))
    before = view(west, "web", "east")
    rejected = metric(west, "peering_records_rejected_total", peer="east")
    _inject(kafka.bootstrap, _stream(east, "west"), old)
    wait_for(
        "old-key records refused",
        lambda: metric(west, "peering_records_rejected_total", peer="east") >= rejected + len(old),
    )
    assert view(west, "web", "east") == before
    assert active(west, "east")
