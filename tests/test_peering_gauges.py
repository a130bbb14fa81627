"""The importer's instance and service gauges follow every upsert, rename and removal (they
are kept per batch, not recounted over the whole imported set)."""

from __future__ import annotations

import httpx

from agent.devbroker import DevBroker
from tests.acceptance_helpers import AgentFactory, metric, peered_pair
from tests.peering_helpers import export, register, wait_for


def test_import_gauges_follow_upserts_renames_and_removals(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    east, west = peered_pair(agent_factory, kafka.bootstrap)

    def gauges() -> tuple[float, float]:
        return (
            metric(west, "peering_imported_instances", peer="east"),
            metric(west, "peering_imported_services", peer="east"),
        )

    register(east, "web-1", "web", 8080)
    register(east, "web-2", "web", 8081)
    register(east, "api-1", "api", 9090)
    export(east, {"web": ["west"], "api": ["west"], "db": ["west"]})
    wait_for("3 instances of 2 services", lambda: gauges() == (3, 2))
    register(east, "web-1", "web", 8082)  # an update changes neither count
    register(east, "web-2", "db", 5432)  # same ID, another service: a rename
    wait_for("web, api and db", lambda: gauges() == (3, 3))
    response = httpx.put(f"{east.url}/v1/agent/service/deregister/api-1", timeout=10)
    assert response.status_code == 200, response.text
    wait_for("api gone", lambda: gauges() == (2, 2))
    export(east, {"web": ["west"]})  # db no longer exported
    wait_for("only web", lambda: gauges() == (1, 1))
