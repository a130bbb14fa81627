"""Peering end to end: two real agent processes on a real broker."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from agent.devbroker import DevBroker
from tests.acceptance_helpers import peered_pair
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import export, imported, register, state, wait_for

AgentFactory = Callable[..., AgentProcess]


def _statuses(entries: list[dict[str, object]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        service = entry["Service"]
        checks = entry["Checks"]
        assert isinstance(service, dict)
        assert isinstance(checks, list)
        worst = "passing"
        for check in checks:
            if check["Status"] == "critical" or (
                check["Status"] == "warning" and worst == "passing"
            ):
                worst = check["Status"]
        out[service["ID"]] = worst
    return out


def test_two_agents_share_a_service(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """Token, establish, export, health change, deregister, unexport, delete: all propagate."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)

    ttl = {"Check": {"CheckID": "", "TTL": "30s", "Status": "passing"}}
    register(east, "web-1", "web", 8080, **ttl)
    register(east, "web-2", "web", 8081, **ttl)
    register(east, "db-1", "db", 5432)
    export(east, {"web": ["west"]})

    wait_for("both web instances on west", lambda: len(imported(west, "web", "east")) == 2)
    assert imported(west, "db", "east") == []
    # Imported entries never mix into the local catalog.
    assert httpx.get(f"{west.url}/v1/health/service/web", timeout=5).json() == []

    fail = httpx.put(f"{east.url}/v1/agent/check/fail/service:web-1", timeout=5)
    assert fail.status_code == 200, fail.text
    wait_for(
        "web-1 critical on west",
        lambda: _statuses(imported(west, "web", "east")).get("web-1") == "critical",
    )

    httpx.put(f"{east.url}/v1/agent/service/deregister/web-2", timeout=5).raise_for_status()
    wait_for("web-2 gone on west", lambda: len(imported(west, "web", "east")) == 1)

    export(east, {})
    wait_for("web unexported", lambda: imported(west, "web", "east") == [])
    export(east, {"web": ["west"]})
    wait_for("web re-exported", lambda: len(imported(west, "web", "east")) == 1)

    def stream_status() -> dict[str, object]:
        status: dict[str, object] = httpx.get(f"{west.url}/v1/peering/east", timeout=5).json()[
            "StreamStatus"
        ]
        return status

    # Heartbeats flow when the exporter is idle (records in between count as liveness too).
    wait_for("a heartbeat on west", lambda: stream_status()["LastHeartbeat"] is not None)
    assert stream_status()["ImportedServices"] == ["web"]

    deleted = httpx.delete(f"{west.url}/v1/peering/east", timeout=5)
    assert deleted.status_code == 200, deleted.text
    wait_for("east TERMINATED", lambda: state(east, "west") == "TERMINATED")
    assert imported(west, "web", "east") == []
    wait_for("west forgets the peering", lambda: state(west, "east") is None)


def test_sigterm_stops_a_peered_agent_within_five_seconds(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """With streams, bootstrap loop and a blocking query running, SIGTERM exits 0 within 5 s."""
    import threading
    import time

    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "web-1", "web", 8080)
    export(east, {"web": ["west"]})
    wait_for("web on west", lambda: len(imported(west, "web", "east")) == 1)
    index = httpx.get(f"{west.url}/v1/health/service/web?peer=east", timeout=5).headers[
        "X-Consul-Index"
    ]
    blocking = threading.Thread(
        target=lambda: httpx.get(
            f"{west.url}/v1/health/service/web",
            params={"peer": "east", "index": index, "wait": "60s"},
            timeout=70,
        ),
        daemon=True,
    )
    blocking.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert west.stop(timeout=10) == 0
    assert time.monotonic() - started < 5
    blocking.join(timeout=5)
    assert not blocking.is_alive()
    # Nothing failed on the way down: a clean stop, not a crash of a child task.
    assert "failed" not in west.log().split("received SIGTERM")[-1]


def test_an_imported_services_index_stays_while_another_one_changes(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """`?peer=` answers have their own X-Consul-Index too: imports of another service from
    the same peer leave a watcher of this one waiting (not answered at once as behind)."""
    import time

    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "web-1", "web", 8080)
    register(east, "api-1", "api", 9090)
    export(east, {"web": ["west"], "api": ["west"]})
    wait_for("web and api on west", lambda: len(imported(west, "api", "east")) == 1)
    wait_for("web on west", lambda: len(imported(west, "web", "east")) == 1)

    def index_of(path: str) -> int:
        answer = httpx.get(f"{west.url}{path}", params={"peer": "east"}, timeout=5)
        return int(answer.headers["X-Consul-Index"])

    web = index_of("/v1/health/service/web")
    services = index_of("/v1/catalog/services")
    register(east, "api-2", "api", 9091)
    wait_for("api-2 on west", lambda: len(imported(west, "api", "east")) == 2)
    assert index_of("/v1/health/service/web") == web
    assert index_of("/v1/catalog/services") > services  # lists api, which changed
    started = time.monotonic()
    answer = httpx.get(
        f"{west.url}/v1/health/service/web",
        params={"peer": "east", "index": web, "wait": "500ms"},
        timeout=10,
    )
    assert time.monotonic() - started >= 0.45  # it waited for its ?wait
    assert int(answer.headers["X-Consul-Index"]) == web
    assert [entry["Service"]["ID"] for entry in answer.json()] == ["web-1"]
