"""Bad input on a running agent: each gets a clear 4xx (or exit 1), a counted metric, and
nothing stored or lost. Complements test_http_api.py (bad registrations, oversized register
body, bad config entries) and test_agent_process.py / test_config.py (bad flags)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.devbroker import DevBroker
from tests.acceptance_helpers import AgentFactory, metric_by, token_for
from tests.agent_fixtures import AgentProcess, cli_env, peering_command
from tests.peering_helpers import FAST_ENV, register

DEEP = b"[" * 5000 + b"]" * 5000
HUGE = b'{"PeerName": "big", "Meta": {"k": "' + b"x" * (600 * 1024) + b'"}}'


def _snapshot(agent: AgentProcess) -> tuple[Any, ...]:
    """Everything a bad request must leave alone: local services, config, peerings, index."""
    services = httpx.get(f"{agent.url}/v1/agent/services", timeout=10).json()
    config = httpx.get(f"{agent.url}/v1/config/exported-services/default", timeout=10).text
    peerings = httpx.get(f"{agent.url}/v1/peerings", timeout=10).json()
    index = httpx.get(f"{agent.url}/v1/catalog/services", timeout=10).headers["X-Consul-Index"]
    return services, config, peerings, index


def _client_errors(agent: AgentProcess) -> float:
    """4xx answers counted by the agent, without the 404 of the unset config entry that
    ``_snapshot`` itself reads."""
    codes = metric_by(agent, "peering_http_requests_total", "code")
    return sum(v for code, v in codes.items() if code.startswith("4") and code != "404")


@pytest.fixture
def victim(kafka: DevBroker, agent_factory: AgentFactory) -> AgentProcess:
    agent = agent_factory(name="victim", kafka=kafka.bootstrap, env=FAST_ENV)
    register(agent, "keep-1", "keep", 8080)
    token_for(agent, "friend")  # a PENDING peering that must survive
    return agent


# Wrongly typed, missing and oversized fields on the peering and config endpoints.
BAD_BODIES: list[tuple[str, str, bytes, int, str]] = [
    ("POST", "/v1/peering/token", b'{"PeerName": 5}', 400, "$.PeerName"),
    ("POST", "/v1/peering/token", b'{"PeerName": "x", "Meta": "m"}', 400, "$.Meta"),
    ("POST", "/v1/peering/token", b'{"PeerName": "Bad_Name"}', 400, "invalid peer name"),
    ("POST", "/v1/peering/token", b"[]", 400, "Expected `object`"),
    ("POST", "/v1/peering/token", HUGE, 413, "too large"),
    ("POST", "/v1/peering/establish", b'{"PeerName": "x"}', 400, "PeeringToken"),
    ("POST", "/v1/peering/establish", b'{"PeerName": "x", "PeeringToken": 7}', 400, "$"),
    ("POST", "/v1/peering/establish", b'{"PeerName": ', 400, "malformed JSON"),
    ("POST", "/v1/peering/establish", HUGE, 413, "too large"),
    ("PUT", "/v1/config", HUGE, 413, "too large"),
    ("PUT", "/v1/config", b'{"Kind": ["exported-services"]}', 400, "Kind"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Tags": "a"}', 400, "$.Tags"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Meta": {"k": 1}}', 400, "$.Meta"),
]


@pytest.mark.parametrize(("method", "path", "body", "code", "message"), BAD_BODIES)
def test_bad_bodies_are_refused_and_change_nothing(
    victim: AgentProcess, method: str, path: str, body: bytes, code: int, message: str
) -> None:
    """Wrong types, missing fields, broken JSON, huge bodies: 4xx naming it, state kept."""
    before, errors = _snapshot(victim), _client_errors(victim)
    response = httpx.request(method, f"{victim.url}{path}", content=body, timeout=15)
    assert response.status_code == code, response.text
    assert message in response.text, response.text
    assert _snapshot(victim) == before
    assert _client_errors(victim) == errors + 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/agent/service/register"),
        ("PUT", "/v1/config"),
        ("POST", "/v1/peering/token"),
        ("POST", "/v1/peering/establish"),
    ],
)
def test_deeply_nested_json_is_a_400(victim: AgentProcess, method: str, path: str) -> None:
    """5000 levels of nesting are malformed input (400), not an internal error."""
    before = _snapshot(victim)
    response = httpx.request(method, f"{victim.url}{path}", content=DEEP, timeout=15)
    assert _snapshot(victim) == before
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.text


def test_tampered_tokens_are_refused_before_any_handshake(
    kafka: DevBroker, victim: AgentProcess, agent_factory: AgentFactory
) -> None:
    """Every single-character edit of a real token is refused with 400, storing nothing."""
    acceptor = agent_factory(name="acceptor", kafka=kafka.bootstrap, env=FAST_ENV)
    token = token_for(acceptor, "victim")
    before, errors = _snapshot(victim), _client_errors(victim)
    step = max(1, len(token) // 40)
    tried = 0
    for index in range(5, len(token), step):
        swapped = "A" if token[index] != "A" else "B"
        bad = token[:index] + swapped + token[index + 1 :]
        response = httpx.post(
            f"{victim.url}/v1/peering/establish",
            json={"PeerName": "acceptor", "PeeringToken": bad},
            timeout=15,
        )
        assert response.status_code == 400, (index, response.text)
        assert "invalid peering token" in response.text
        tried += 1
    assert _snapshot(victim) == before
    assert _client_errors(victim) == errors + tried
    malformed = metric_by(victim, "peering_handshakes_total", "result", role="dialer")
    assert malformed.get("malformed", 0) == tried


CONFIG_MISTAKES = [
    ('name = "alpha"\nkafka = 5\n', "kafka"),
    ('name = "alpha"\nkafka = ["nohost"]\n', "kafka"),
    ('name = "alpha"\nkafka = ["h:70000"]\n', "kafka"),
    ('name = "Alpha!"\nkafka = ["h:1"]\n', "name"),
    ('name = "alpha"\nkafka = ["h:1"]\nhttp = "localhost"\n', "http"),
    ('name = "alpha"\nkafka = ["h:1"]\nheartbeat_interval = "5s"\n', "heartbeat_interval"),
    ('name = "alpha"\nkafka = ["h:1"]\nmax_body_bytes = 1\n', "max_body_bytes"),
    ('name = "alpha"\nkafka = ["h:1"]\nlog_level = "loud"\n', "log_level"),
    ('name = "alpha"\nkafka = ["h:1"]\n[kafka_security]\nprotocol = 5\n', "kafka_security"),
]


@pytest.mark.parametrize(("text", "field"), CONFIG_MISTAKES)
def test_config_file_mistakes_exit_1_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    """``peering agent --config`` with a mistake: exit 1, one line naming the field."""
    file = tmp_path / "agent.toml"
    file.write_text(text)
    result = subprocess.run(
        peering_command("agent", "--config", str(file), "--data-dir", str(tmp_path / "d")),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: invalid config: {field}"), lines[0]
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_invalid_toml_file_exits_1_naming_the_file(tmp_path: Path) -> None:
    """An unparseable config file: exit 1, one line naming the file."""
    file = tmp_path / "agent.toml"
    file.write_text('name = "alpha\nkafka = [\n')
    result = subprocess.run(
        peering_command("agent", "--config", str(file)),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not valid TOML" in result.stderr
    assert str(file) in result.stderr
