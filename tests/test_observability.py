"""Observability on a live two-cluster setup: a real Prometheus scrapes two real agents."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from agent import crypto
from agent.devbroker import DevBroker
from agent.wire.token import decode_token
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import FAST_ENV, export, imported, register, wait_for
from tests.prometheus_fixture import RULES_FILE, PrometheusFactory, fast_rules

AgentFactory = Callable[..., AgentProcess]
DASHBOARD = Path(__file__).resolve().parents[1] / "ops" / "grafana" / "dashboards" / "peering.json"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, variables filled for all values."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            expr = expr.replace("$__rate_interval", "1m").replace("$peer", ".*")
            expr = expr.replace("$instance", ".*")
            out.append((panel.get("title", "?"), expr))
    return out


def test_prometheus_sees_peering_health_and_alerts(
    kafka: DevBroker,
    agent_factory: AgentFactory,
    prometheus_factory: PrometheusFactory,
    tmp_path: Path,
) -> None:
    """Scraped metrics answer state, counts, heartbeat age and propagation; an alert fires
    when the peer agent stops and resolves when it is back; dashboard queries return data."""
    json_logs = ["--log-format", "json"]
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV, extra_args=json_logs)
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV, extra_args=json_logs)
    token = httpx.post(f"{east.url}/v1/peering/token", json={"PeerName": "west"}, timeout=10)
    token_text = token.json()["PeeringToken"]
    established = httpx.post(
        f"{west.url}/v1/peering/establish",
        json={"PeerName": "east", "PeeringToken": token_text},
        timeout=30,
    )
    assert established.status_code == 200, established.text
    register(east, "web-1", "web", 8080)
    register(east, "web-2", "web", 8081)
    export(east, {"web": ["west"]})
    wait_for("imports on west", lambda: len(imported(west, "web", "east")) == 2)

    prometheus = prometheus_factory.start(
        targets=(east.addr, west.addr), rule_files=(fast_rules(RULES_FILE, tmp_path),)
    )
    prometheus.wait_scraped()

    def value(promql: str) -> float | None:
        return prometheus.query_value(promql)

    west_i, east_i = f'instance="{west.addr}"', f'instance="{east.addr}"'
    wait_for(
        "ACTIVE on both sides",
        lambda: (
            value(f'peering_state{{state="ACTIVE",peer="west",{east_i}}}') == 1
            and value(f'peering_state{{state="ACTIVE",peer="east",{west_i}}}') == 1
        ),
    )
    wait_for("exported count", lambda: value(f"peering_exported_instances{{{east_i}}}") == 2)
    wait_for("imported count", lambda: value(f"peering_imported_instances{{{west_i}}}") == 2)
    wait_for(
        "a fresh heartbeat",
        lambda: (
            (
                age := value(
                    f"time() - peering_last_heartbeat_received_timestamp_seconds{{{west_i}}}"
                )
            )
            is not None
            and age < 5
        ),
    )
    wait_for(
        "propagation observations",
        lambda: (
            (count := value(f"peering_propagation_delay_seconds_count{{{west_i}}}")) is not None
            and count >= 2
        ),
    )
    p99 = value(
        "histogram_quantile(0.99, sum by (le) "
        f"(peering_propagation_delay_seconds_bucket{{{west_i}}}))"
    )
    assert p99 is not None
    assert 0 < p99 <= 5

    # Every dashboard panel query returns data for this live setup (rates need two samples).
    queries = dashboard_queries()
    assert queries

    def empty_queries() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries if not prometheus.query(expr)]

    wait_for("every dashboard query to return data", lambda: not empty_queries(), timeout=40)

    # The peer agent stops: its target is down and east's peering leaves ACTIVE.
    west.kill()
    wait_for("PeeringAgentDown firing", lambda: prometheus.firing("PeeringAgentDown"), timeout=30)
    wait_for("PeeringNotActive firing", lambda: prometheus.firing("PeeringNotActive"), timeout=30)
    west.restart()
    wait_for(
        "alerts resolved",
        lambda: (
            not prometheus.firing("PeeringAgentDown") and not prometheus.firing("PeeringNotActive")
        ),
        timeout=40,
    )

    # Structured logs: one JSON object per line, state changes carry peer and peering id.
    for agent in (east, west):
        lines = [json.loads(line) for line in agent.log().splitlines() if line.startswith("{")]
        changes = [line for line in lines if line.get("event") == "state_change"]
        assert changes, agent.log()[-2000:]
        assert all(line["peer"] and line["peering_id"] for line in changes)

    # No token material anywhere an operator or a scraper can read.
    token_value = decode_token(token_text, time.time())
    secrets = {
        token_text,
        token_text.split(".")[1],
        crypto.b64encode(token_value.Secret),
        token_value.Secret.hex(),
    }
    exposed = [east.log(), west.log()]
    exposed += [httpx.get(f"{a.url}/metrics", timeout=5).text for a in (east, west)]
    exposed += [httpx.get(f"{a.url}/v1/peerings", timeout=5).text for a in (east, west)]
    for text in exposed:
        for secret in secrets:
            assert secret not in text
    assert not re.search(r"pat1\.[A-Za-z0-9_-]{20,}", "".join(exposed))
