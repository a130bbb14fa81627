"""py-consul, unmodified, against a running agent: register, health and a blocking query."""

from __future__ import annotations

import threading

import consul  # type: ignore[import-untyped]  # py-consul ships no type information
import pytest

from tests.agent_fixtures import AgentProcess

# Fixtures bound here until tests/conftest.py registers tests.agent_fixtures as a plugin.

pytestmark = pytest.mark.timeout(60)


def test_py_consul_register_health_and_blocking_query(agent_process: AgentProcess) -> None:
    """py-consul registers with a TTL check, passes it, reads health and blocks on an index."""
    c = consul.Consul(host="127.0.0.1", port=agent_process.port)
    assert c.agent.service.register(
        "web",
        service_id="web-1",
        address="10.0.0.1",
        port=80,
        tags=["v1"],
        meta={"ver": "1"},
        check=consul.Check.ttl("30s"),
    )
    assert c.agent.check.ttl_pass("service:web-1", notes="ready")

    index, nodes = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]
    assert nodes[0]["Service"]["Address"] == "10.0.0.1"
    assert nodes[0]["Checks"][0]["Status"] == "passing"

    _, services = c.catalog.services()
    assert services == {"web": ["v1"]}
    assert c.agent.self()["Config"]["Datacenter"] == "alpha"
    assert c.status.leader() == agent_process.addr

    result: dict[str, object] = {}

    def blocker() -> None:
        blocking = consul.Consul(host="127.0.0.1", port=agent_process.port)
        result["index"], result["nodes"] = blocking.health.service("web", index=index, wait="20s")

    thread = threading.Thread(target=blocker)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # blocked until something changes
    assert c.agent.service.register("web", service_id="web-2", port=81)
    thread.join(10)
    assert not thread.is_alive()
    assert int(result["index"]) > int(index)  # type: ignore[call-overload]
    assert sorted(n["Service"]["ID"] for n in result["nodes"]) == ["web-1", "web-2"]  # type: ignore[attr-defined]

    assert c.agent.service.deregister("web-2")
    _, nodes = c.health.service("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]


def test_py_consul_sees_errors(agent_process: AgentProcess) -> None:
    """Consul clients get Consul-style failures for unknown checks and bad names."""
    c = consul.Consul(host="127.0.0.1", port=agent_process.port)
    # py-consul maps a 404 to False for boolean calls.
    assert c.agent.check.ttl_pass("no-such-check") is False
    with pytest.raises(consul.ConsulException):
        c.agent.service.register("bad name")
