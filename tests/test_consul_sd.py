"""Prometheus' own Consul service discovery (consul_sd_configs) against real agents."""

# ops/prometheus/consul-sd-check is a small Go command around Prometheus' package
# discovery/consul (the code behind consul_sd_configs), built by its build.sh. Against an
# agent it finds that agent's local services; with path_prefix /peer/<name> it finds exactly
# the services imported from that peer.

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.devbroker import DevBroker
from tests.acceptance_helpers import peered_pair
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import export, imported, register, wait_for

AgentFactory = Callable[..., AgentProcess]

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "ops" / "prometheus" / "consul-sd-check" / "build.sh"


@pytest.fixture(scope="session")
def consul_sd_check() -> Path:
    """The consul-sd-check binary, built by build.sh when missing or outdated."""
    try:
        done = subprocess.run(
            [str(BUILD)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"build.sh took over 600 s:\n{exc.stdout!r}\n{exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"build.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    binary = Path(done.stdout.strip().splitlines()[-1])
    assert binary.is_file(), done.stdout
    return binary


def discover(binary: Path, agent: AgentProcess, *args: str) -> dict[str, list[dict[str, str]]]:
    """Run Consul SD against ``agent``: service -> targets, each with its group's labels."""
    done = subprocess.run(
        [str(binary), "-server", agent.addr, "-timeout", "20s", *args],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0, f"consul-sd-check {args}: {done.stderr}"
    groups: list[dict[str, Any]] = json.loads(done.stdout)
    found: dict[str, list[dict[str, str]]] = {}
    for group in groups:
        targets = [{**group["labels"], **target} for target in group["targets"]]
        if targets:
            found[group["source"]] = targets
    return found


def addresses(targets: list[dict[str, str]]) -> set[str]:
    """The ``__address__`` of each target."""
    return {target["__address__"] for target in targets}


def test_consul_sd_finds_local_and_imported_services(
    kafka: DevBroker, agent_factory: AgentFactory, consul_sd_check: Path
) -> None:
    """Without a prefix: west's own services; with /peer/east: exactly east's exported ones."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)

    register(east, "web-1", "web", 8080, Address="10.0.0.1", Tags=["blue"])
    register(east, "web-2", "web", 8081, Address="10.0.0.2")
    register(east, "db-1", "db", 5432, Address="10.0.0.3")
    export(east, {"web": ["west"]})
    register(west, "api-1", "api", 9000, Address="10.1.0.1")
    register(west, "api-2", "api", 9001, Address="10.1.0.2")
    register(west, "web-w", "web", 7000, Address="10.1.0.3")  # same name as east's, local
    wait_for("east's web on west", lambda: len(imported(west, "web", "east")) == 2)

    local = discover(consul_sd_check, west)
    assert set(local) == {"api", "web"}
    assert addresses(local["api"]) == {"10.1.0.1:9000", "10.1.0.2:9001"}
    assert addresses(local["web"]) == {"10.1.0.3:7000"}
    for name, targets in local.items():
        for target in targets:
            assert target["__meta_consul_service"] == name
            host, port = target["__address__"].rsplit(":", 1)
            assert target["__meta_consul_service_address"] == host
            assert target["__meta_consul_service_port"] == port
    ids = {t["__meta_consul_service_id"] for targets in local.values() for t in targets}
    assert ids == {"api-1", "api-2", "web-w"}

    from_east = discover(consul_sd_check, west, "-path-prefix", "/peer/east")
    assert set(from_east) == {"web"}
    assert addresses(from_east["web"]) == {"10.0.0.1:8080", "10.0.0.2:8081"}
    by_id = {t["__meta_consul_service_id"]: t for t in from_east["web"]}
    assert set(by_id) == {"web-1", "web-2"}
    assert by_id["web-1"]["__meta_consul_service"] == "web"
    assert by_id["web-1"]["__meta_consul_tags"] == ",blue,"

    # A fixed service list takes Consul SD's other path (health watches only, no catalog).
    named = discover(consul_sd_check, west, "-path-prefix", "/peer/east", "-services", "web")
    assert set(named) == {"web"}
    assert addresses(named["web"]) == {"10.0.0.1:8080", "10.0.0.2:8081"}
