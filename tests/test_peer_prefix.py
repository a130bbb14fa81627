"""``/peer/<name>/v1/...``: a peer's imported catalog for Consul SD's ``path_prefix``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import consul  # type: ignore[import-untyped]  # py-consul ships no type information
import httpx
import pytest

from agent.devbroker import DevBroker
from agent.httpapi import ApiError, peer_prefix_rewrite
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import FAST_ENV, export, peer, register, wait_for

AgentFactory = Callable[..., AgentProcess]

pytestmark = pytest.mark.timeout(180)


def test_rewrite_adds_the_peer_parameter() -> None:
    """A prefixed read becomes the plain path with ``peer=<name>`` and the query kept."""
    assert peer_prefix_rewrite(
        "/peer/east/v1/health/service/web", "GET", b"passing&index=7&wait=5s"
    ) == ("east", "/v1/health/service/web", b"passing&index=7&wait=5s&peer=east")
    assert peer_prefix_rewrite("/peer/east/v1/catalog/services", "HEAD", b"") == (
        "east",
        "/v1/catalog/services",
        b"peer=east",
    )
    # The same peer named twice is fine (and named once in the result).
    assert peer_prefix_rewrite("/peer/east/v1/catalog/service/db", "GET", b"peer=east&tag=a") == (
        "east",
        "/v1/catalog/service/db",
        b"tag=a&peer=east",
    )


@pytest.mark.parametrize(
    ("path", "method", "query", "status"),
    [
        ("/peer/east/v1/agent/service/register", "PUT", b"", 405),
        ("/peer/east/v1/catalog/services", "POST", b"", 405),
        ("/peer/east/v1/agent/services", "GET", b"", 404),
        ("/peer/east/metrics", "GET", b"", 404),
        ("/peer/east", "GET", b"", 404),
        ("/peer//v1/catalog/services", "GET", b"", 404),
        ("/peer/Bad_Peer/v1/catalog/services", "GET", b"", 400),
        ("/peer/east/v1/catalog/services", "GET", b"peer=west", 400),
    ],
)
def test_rewrite_refusals(path: str, method: str, query: bytes, status: int) -> None:
    """Writes are 405, paths outside the aliased reads 404, bad or conflicting peers 400."""
    with pytest.raises(ApiError) as caught:
        peer_prefix_rewrite(path, method, query)
    assert caught.value.status == status


def _get(agent: AgentProcess, path: str, **params: str) -> Any:
    response = httpx.get(f"{agent.url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_peer_prefix_serves_imported_services(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Exported services read through the prefix as through ``?peer=``; writes are refused."""
    east = agent_factory(name="pfx-east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="pfx-west", kafka=kafka.bootstrap, env=FAST_ENV)
    peer(east, west)
    ttl = {"Check": {"CheckID": "", "TTL": "30s", "Status": "passing"}}
    register(east, "web-1", "web", 8080, Tags=["v1"], **ttl)
    register(east, "web-2", "web", 8081, Tags=["v1"], **ttl)
    register(east, "db-1", "db", 5432)
    export(east, {"web": ["pfx-west"]})

    prefix = "/peer/pfx-east"
    wait_for(
        "web under the prefix",
        lambda: _get(west, f"{prefix}/v1/catalog/services") == {"web": ["v1"]},
    )
    health = _get(west, f"{prefix}/v1/health/service/web")
    assert sorted(e["Service"]["ID"] for e in health) == ["web-1", "web-2"]
    assert {e["Service"]["PeerName"] for e in health} == {"pfx-east"}
    assert health == _get(west, "/v1/health/service/web", peer="pfx-east")
    assert _get(west, f"{prefix}/v1/health/service/web", passing="") == health
    entries = _get(west, f"{prefix}/v1/catalog/service/web")
    assert entries == _get(west, "/v1/catalog/service/web", peer="pfx-east")
    assert _get(west, f"{prefix}/v1/health/service/db") == []
    # Local services never show under a peer's prefix, imported ones never without it.
    register(west, "local-1", "local", 9000)
    assert "local" not in _get(west, f"{prefix}/v1/catalog/services")
    assert "web" not in _get(west, "/v1/catalog/services")
    assert _get(west, f"{prefix}/v1/agent/self")["Config"]["Datacenter"] == "pfx-west"

    # An unknown peer answers as ?peer= does; a bad name with the very same 400.
    assert _get(west, "/peer/nobody/v1/catalog/services") == {}
    assert _get(west, "/v1/catalog/services", peer="nobody") == {}
    bad = httpx.get(f"{west.url}/peer/Bad_Peer/v1/catalog/services", timeout=5)
    plain = httpx.get(f"{west.url}/v1/catalog/services?peer=Bad_Peer", timeout=5)
    assert (bad.status_code, bad.text) == (400, plain.text)

    write = httpx.put(f"{west.url}{prefix}/v1/agent/service/register", json={}, timeout=5)
    assert write.status_code == 405
    assert write.headers["Allow"] == "GET, HEAD"
    assert httpx.get(f"{west.url}{prefix}/v1/agent/services", timeout=5).status_code == 404

    # Metrics count prefixed requests under the route's own template.
    text = httpx.get(f"{west.url}/metrics", timeout=5).text
    assert 'route="/v1/health/service/{name}"' in text
    assert "/peer/" not in text


def test_consul_clients_read_through_the_prefix(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """py-consul and a raw blocking query read a peer's services through the prefix."""
    east = agent_factory(name="pfc-east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="pfc-west", kafka=kafka.bootstrap, env=FAST_ENV)
    peer(east, west)
    register(east, "api-1", "api", 7000)
    export(east, {"api": ["pfc-west"]})

    # py-consul takes no path prefix in its constructor; its transport joins ``base_uri``
    # and the request path, so the prefix goes there (what Prometheus' path_prefix does).
    c = consul.Consul(host="127.0.0.1", port=west.port)
    c.http.base_uri = f"{c.http.base_uri}/peer/pfc-east"
    wait_for("api through py-consul", lambda: "api" in c.catalog.services()[1])
    index, nodes = c.health.service("api")
    assert [n["Service"]["ID"] for n in nodes] == ["api-1"]
    assert nodes[0]["Service"]["PeerName"] == "pfc-east"
    assert c.agent.self()["Config"]["Datacenter"] == "pfc-west"

    result: dict[str, Any] = {}

    def blocker() -> None:
        blocking = consul.Consul(host="127.0.0.1", port=west.port)
        blocking.http.base_uri = f"{blocking.http.base_uri}/peer/pfc-east"
        result["index"], result["nodes"] = blocking.health.service("api", index=index, wait="30s")

    thread = threading.Thread(target=blocker)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # blocked until the imported catalog changes
    register(east, "api-2", "api", 7001)
    thread.join(20)
    assert not thread.is_alive()
    assert int(result["index"]) > int(index)
    ids = sorted(n["Service"]["ID"] for n in result["nodes"])
    if ids != ["api-1", "api-2"]:  # woken by an earlier change: Consul clients just ask again
        _, nodes = c.health.service("api", index=result["index"], wait="20s")
        ids = sorted(n["Service"]["ID"] for n in nodes)
    assert ids == ["api-1", "api-2"]

    # The same through httpx on the catalog endpoint Prometheus' Consul SD watches.
    first = httpx.get(f"{west.url}/peer/pfc-east/v1/catalog/services", timeout=5)
    current = first.headers["X-Consul-Index"]
    export(east, {"api": ["pfc-west"], "db": ["pfc-west"]})
    register(east, "db-1", "db", 5432)

    def db_seen() -> bool:
        response = httpx.get(
            f"{west.url}/peer/pfc-east/v1/catalog/services",
            params={"index": current, "wait": "20s"},
            timeout=30,
        )
        return "db" in response.json()

    wait_for("db through a blocking query", db_seen, timeout=30)
