"""The peering CLI verbs, run as real processes against real agents on a real broker."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from agent.devbroker import DevBroker
from tests.agent_fixtures import AgentProcess, cli_env, free_port, peering_command
from tests.peering_helpers import FAST_ENV, export, register, state, wait_for

AgentFactory = Callable[..., AgentProcess]

pytestmark = pytest.mark.timeout(180)


def cli(
    agent: AgentProcess | str, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``peering ARGS`` against ``agent`` (selected with PEERING_HTTP_ADDR)."""
    addr = agent if isinstance(agent, str) else agent.addr
    return subprocess.run(
        peering_command(*args),
        env=cli_env({"PEERING_HTTP_ADDR": addr, "COLUMNS": "160"}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(agent: AgentProcess, *args: str) -> str:
    done = cli(agent, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def refused(agent: AgentProcess | str, *args: str) -> str:
    """The command fails with exit 1 and exactly one ``error:`` line, no traceback."""
    done = cli(agent, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def read_json(agent: AgentProcess, name: str) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(ok(agent, "read", "--name", name, "--format", "json"))
    return view


def test_cli_peering_lifecycle(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """generate-token | establish | list | read | rotate-keys | delete, end to end."""
    east = agent_factory(name="cli-east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="cli-west", kafka=kafka.bootstrap, env=FAST_ENV)

    out = ok(east, "generate-token", "--name", "cli-west", "--meta", "team=payments")
    token = out.strip()
    assert out == token + "\n"  # only the token, so TOKEN=$(peering generate-token ...) works
    assert token
    assert not any(c.isspace() for c in token)
    assert state(east, "cli-west") == "PENDING"

    out = ok(west, "establish", "--name", "cli-east", "--peering-token", token, "--meta", "env=t")
    assert out.count("\n") == 1
    assert "cli-east" in out
    wait_for("east ACTIVE", lambda: state(east, "cli-west") == "ACTIVE")
    wait_for("west ACTIVE", lambda: state(west, "cli-east") == "ACTIVE")

    # The same token a second time is refused, with the agent's own message.
    again = refused(west, "establish", "--name", "cli-east-2", "--token", token)
    assert again.endswith("(409): this token belongs to a peering this agent already has")

    register(east, "web-1", "web", 8080)
    export(east, {"web": ["cli-west"]})
    wait_for(
        "web imported on west",
        lambda: read_json(west, "cli-east")["StreamStatus"]["ImportedServices"] == ["web"],
    )

    [row] = json.loads(ok(west, "list", "--format", "json"))
    assert row["Name"] == "cli-east"
    assert row["State"] == "ACTIVE"
    assert row["Role"] == "dialer"
    assert row["PeerServerName"] == "cli-east"
    table = ok(west, "list")
    for text in ("NAME", "LAST RECEIVE", "cli-east", "ACTIVE", "dialer"):
        assert text in table

    view = read_json(east, "cli-west")
    assert view["Role"] == "acceptor"
    assert view["Meta"] == {"team": "payments"}
    assert view["StreamStatus"]["ExportedServices"] == ["web"]
    assert read_json(west, "cli-east")["Meta"] == {"env": "t"}
    details = ok(east, "read", "--name", "cli-west")
    for text in ("cli-west", "acceptor", "team=payments", "Exported services", "web"):
        assert text in details

    assert "cli-west" in ok(east, "rotate-keys", "--name", "cli-west")
    # Events keep flowing under the new keys.
    register(east, "web-2", "web", 8081)

    def web_instances() -> int:
        done = cli(west, "services", "--peer", "cli-east", "--format", "json")
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        return sum(r["Instances"] for r in rows if r["Name"] == "web")

    wait_for("web-2 after the rotation", lambda: web_instances() == 2)

    assert "cli-east" in ok(west, "delete", "--name", "cli-east")
    wait_for("east TERMINATED", lambda: state(east, "cli-west") == "TERMINATED")
    wait_for("west forgets the peering", lambda: state(west, "cli-east") is None)
    assert json.loads(ok(west, "list", "--format", "json")) == []


def test_cli_peering_refusals(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """Unknown peers, malformed tokens and bad flags exit 1 with the agent's one-line reason."""
    agent = agent_factory(name="cli-solo", kafka=kafka.bootstrap, env=FAST_ENV)

    for verb in ("read", "delete", "rotate-keys"):
        line = refused(agent, verb, "--name", "nobody")
        assert "404" in line
        assert "no peering named 'nobody'" in line

    line = refused(agent, "establish", "--name", "far", "--token", "not-a-token")
    assert "invalid peering token" in line
    assert state(agent, "far") is None

    assert "peer name" in refused(agent, "generate-token", "--name", "Bad_Name")
    assert "KEY=VALUE" in refused(agent, "generate-token", "--name", "ok", "--meta", "novalue")
    assert state(agent, "ok") is None


def test_cli_peering_unreachable_agent() -> None:
    """With no agent at the address every peering verb fails with one line and exit 1."""
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (
        ("generate-token", "--name", "x"),
        ("establish", "--name", "x", "--token", "t"),
        ("list",),
        ("read", "--name", "x"),
        ("delete", "--name", "x"),
        ("rotate-keys", "--name", "x"),
    ):
        assert "cannot reach the agent" in refused(nowhere, *args)


def test_cli_establish_timeout(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """An acceptor that never answers: establish exits 1 with the agent's timeout line."""
    gone = agent_factory(name="cli-gone", kafka=kafka.bootstrap, env=FAST_ENV)
    waiter = agent_factory(
        name="cli-waiter",
        kafka=kafka.bootstrap,
        env={**FAST_ENV, "PEERING_ESTABLISH_TIMEOUT": "2"},
    )
    token = ok(gone, "generate-token", "--name", "cli-waiter").strip()
    gone.kill()
    line = refused(waiter, "establish", "--name", "cli-gone", "--token", token)
    assert "(504): no answer from the acceptor within 2s" in line
    assert "cli-gone" in line
    assert state(waiter, "cli-gone") is None  # nothing half-made is left behind
