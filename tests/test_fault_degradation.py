"""Graceful degradation: with Kafka unreachable (proxy cut, blackholed, or the broker frozen)
the agents keep serving local and imported catalogs, say so in metrics, and recover by
themselves once Kafka is back (no restart)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.acceptance_helpers import AgentFactory, active, metric, view
from tests.agent_fixtures import AgentProcess
from tests.faults.convergence import differences
from tests.faults.proxy import proxied_broker
from tests.kafka_fixtures import BrokerFactory
from tests.peering_helpers import FAST_ENV, export, peer, register, wait_for

TTL = {"Check": {"CheckID": "", "TTL": "600s", "Status": "passing"}}


def _connected(agent: AgentProcess, kafka: str) -> float:
    return metric(agent, "peering_kafka_connected", kafka=kafka)


def test_catalogs_served_while_kafka_unreachable_and_recovery_without_restart(
    broker_factory: BrokerFactory, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    """Cut, blackhole and a frozen broker: reads keep working, gauge 0, then converge again."""
    with proxied_broker(broker_factory, tmp_path) as (broker, proxy):
        east = agent_factory(name="east", kafka=proxy.addr, env=FAST_ENV)
        west = agent_factory(name="west", kafka=proxy.addr, env=FAST_ENV)
        peer(east, west)
        register(east, "web-1", "web", 8080, **TTL)
        export(east, {"web": ["west"]})
        wait_for("converged", lambda: not differences(east, west))
        wait_for("gauge up", lambda: _connected(west, proxy.addr) == 1)
        east_pids = (east.proc.pid if east.proc else 0, west.proc.pid if west.proc else 0)

        for fault in ("cut", "drop", "freeze"):
            local, imported = view(east, "web"), view(west, "web", "east")
            started = time.monotonic()
            if fault == "cut":
                proxy.cut()
            elif fault == "drop":
                proxy.drop()
            else:
                broker.suspend()
            try:
                wait_for(
                    f"{fault}: importer reports Kafka down",
                    lambda: _connected(west, proxy.addr) == 0,
                    timeout=45,
                    interval=0.25,
                )
                wait_for(
                    f"{fault}: exporter reports Kafka down",
                    lambda: _connected(east, proxy.addr) == 0,
                    timeout=45,
                    interval=0.25,
                )
                detected = time.monotonic() - started
                # Both catalogs are still served, from local state, while Kafka is away.
                assert view(east, "web") == local
                assert view(west, "web", "east") == imported
                register(east, f"web-{fault}", "web", 8090, **TTL)
                assert f"web-{fault}" in view(east, "web")
                self_info = httpx.get(f"{west.url}/v1/agent/self", timeout=5)
                assert self_info.status_code == 200
                assert self_info.json()["Kafka"][proxy.addr]["Connected"] is False
            finally:
                proxy.heal()
                broker.resume()
            wait_for(
                f"{fault}: converged after recovery",
                lambda: not differences(east, west),
                timeout=60,
                interval=0.25,
            )
            wait_for(f"{fault}: gauge up", lambda: _connected(west, proxy.addr) == 1, timeout=30)
            back = httpx.get(f"{west.url}/v1/agent/self", timeout=5).json()["Kafka"]
            assert back[proxy.addr]["Connected"] is True
            wait_for(f"{fault}: ACTIVE", lambda: active(west, "east") and active(east, "west"))
            print(f"{fault}: outage detected in {detected:.1f}s")
        # Recovered by themselves: same processes throughout.
        assert (east.proc.pid if east.proc else 0, west.proc.pid if west.proc else 0) == east_pids
        assert len(view(west, "web", "east")) == 4


def test_slow_link_still_converges(
    broker_factory: BrokerFactory, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    """With 150 ms added per chunk on every Kafka connection, changes still arrive in order."""
    with proxied_broker(broker_factory, tmp_path) as (_broker, proxy):
        east = agent_factory(name="east", kafka=proxy.addr, env=FAST_ENV)
        west = agent_factory(name="west", kafka=proxy.addr, env=FAST_ENV)
        peer(east, west)
        export(east, {"*": ["west"]})
        proxy.delay(0.15)
        for n in range(5):
            register(east, f"slow-{n}", "slow", 7000 + n, **TTL)
        httpx.put(f"{east.url}/v1/agent/check/fail/service:slow-0", timeout=10)
        wait_for("converged over a slow link", lambda: not differences(east, west), timeout=60)
        assert len(view(west, "slow", "east")) == 5
        proxy.heal()
