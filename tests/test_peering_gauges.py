"""The instance and service gauges of both ends follow every upsert, rename and removal:
the importer's (kept per batch, not recounted over the whole imported set) and the
exporter's (kept per feed row, not re-read from the whole exported view)."""

from __future__ import annotations

import httpx

from agent.devbroker import DevBroker
from agent.model import ServiceInstance
from agent.peering.counts import ExportedCounts
from tests.acceptance_helpers import AgentFactory, metric, peered_pair
from tests.peering_helpers import export, register, wait_for


def test_gauges_follow_upserts_renames_and_removals(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    east, west = peered_pair(agent_factory, kafka.bootstrap)

    def gauges() -> tuple[float, float, float, float]:
        """West's imported (instances, services), then east's exported to west."""
        return (
            metric(west, "peering_imported_instances", peer="east"),
            metric(west, "peering_imported_services", peer="east"),
            metric(east, "peering_exported_instances", peer="west"),
            metric(east, "peering_exported_services", peer="west"),
        )

    register(east, "web-1", "web", 8080)
    register(east, "web-2", "web", 8081)
    register(east, "api-1", "api", 9090)
    export(east, {"web": ["west"], "api": ["west"], "db": ["west"]})
    wait_for("3 instances of 2 services", lambda: gauges() == (3, 2, 3, 2))
    register(east, "web-1", "web", 8082)  # an update changes neither count
    register(east, "web-2", "db", 5432)  # same ID, another service: a rename
    wait_for("web, api and db", lambda: gauges() == (3, 3, 3, 3))
    response = httpx.put(f"{east.url}/v1/agent/service/deregister/api-1", timeout=10)
    assert response.status_code == 200, response.text
    wait_for("api gone", lambda: gauges() == (2, 2, 2, 2))
    export(east, {"web": ["west"]})  # db no longer exported
    wait_for("only web", lambda: gauges() == (1, 1, 1, 1))


def test_exported_counts_follow_puts() -> None:
    def instance(id_: str, name: str) -> ServiceInstance:
        return ServiceInstance(ID=id_, Name=name)

    counts = ExportedCounts(
        {"instance/a": instance("a", "web"), "instance/b": instance("b", "web")}
    )
    assert (counts.instances, counts.services) == (2, 1)
    counts.put("instance/c", instance("c", "api"))
    assert (counts.instances, counts.services) == (3, 2)
    counts.put("instance/b", instance("b", "db"))  # rename
    assert (counts.instances, counts.services) == (3, 3)
    counts.put("instance/c", None)
    counts.put("instance/c", None)  # a second removal of the same key changes nothing
    assert (counts.instances, counts.services) == (2, 2)
    counts.put("instance/a", None)
    counts.put("instance/b", None)
    assert (counts.instances, counts.services) == (0, 0)
