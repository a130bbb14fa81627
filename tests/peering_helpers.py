"""Helpers for peering tests on real agents and a real broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.agent_fixtures import AgentProcess

# Fast liveness for tests: heartbeats every 0.2 s, FAILING after 0.6 s of silence.
FAST_ENV = {
    "PEERING_HEARTBEAT_INTERVAL": "0.2",
    "PEERING_DELETE_GRACE": "1",
    "PEERING_ESTABLISH_TIMEOUT": "20",
}


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.TransportError, AssertionError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def state(agent: AgentProcess, peer: str) -> str | None:
    response = httpx.get(f"{agent.url}/v1/peering/{peer}", timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    value: str = response.json()["State"]
    return value


def peer(acceptor: AgentProcess, dialer: AgentProcess) -> None:
    """Peer two agents: a token on the acceptor (for the dialer's name), establish on the
    dialer; returns once both sides are ACTIVE."""
    token = httpx.post(
        f"{acceptor.url}/v1/peering/token", json={"PeerName": dialer.name}, timeout=10
    )
    token.raise_for_status()
    established = httpx.post(
        f"{dialer.url}/v1/peering/establish",
        json={"PeerName": acceptor.name, "PeeringToken": token.json()["PeeringToken"]},
        timeout=30,
    )
    assert established.status_code == 200, established.text
    wait_for("acceptor ACTIVE", lambda: state(acceptor, dialer.name) == "ACTIVE")
    wait_for("dialer ACTIVE", lambda: state(dialer, acceptor.name) == "ACTIVE")


def register(agent: AgentProcess, service_id: str, name: str, port: int, **extra: Any) -> None:
    body = {"ID": service_id, "Name": name, "Address": "10.0.0.1", "Port": port, **extra}
    response = httpx.put(f"{agent.url}/v1/agent/service/register", json=body, timeout=10)
    assert response.status_code == 200, response.text


def export(agent: AgentProcess, services: dict[str, list[str]]) -> None:
    """Set the exported-services entry: service name -> consumer peers."""
    entry = {
        "Kind": "exported-services",
        "Name": "default",
        "Services": [
            {"Name": name, "Consumers": [{"Peer": p} for p in peers]}
            for name, peers in services.items()
        ],
    }
    response = httpx.put(f"{agent.url}/v1/config", json=entry, timeout=10)
    assert response.status_code == 200, response.text


def imported(agent: AgentProcess, service: str, peer_name: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{agent.url}/v1/health/service/{service}", params={"peer": peer_name}, timeout=10
    )
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()
    return entries
