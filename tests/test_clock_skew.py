"""Clock skew between clusters: one agent runs five minutes ahead (libfaketime), the peering
works both ways anyway, because liveness and ordering never compare the two clocks."""

from __future__ import annotations

import glob
import time
from collections.abc import Callable

import httpx

from agent.devbroker import DevBroker
from tests.agent_fixtures import AgentProcess
from tests.peering_helpers import FAST_ENV, export, imported, peer, register, state, wait_for

AgentFactory = Callable[..., AgentProcess]
SKEW_SECONDS = 300


def _faketime_env(offset_seconds: int) -> dict[str, str]:
    """Environment that shifts the wall clock of one process (monotonic time untouched)."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    assert libraries, "libfaketime missing: make test installs it (ops/install-debian-tools.sh)"
    return {
        "LD_PRELOAD": libraries[0],
        "FAKETIME": f"{offset_seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def _wall_clock(agent: AgentProcess) -> float:
    """The agent's own idea of now: the newest timestamp it reports for its peering."""
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("peering_last_record_sent_timestamp_seconds{")
    ]
    return max(values, default=0.0)


def test_peering_works_with_one_clock_five_minutes_ahead(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Establish, both directions of changes, health, and no FAILING with a skewed clock."""
    ahead = agent_factory(
        name="ahead", kafka=kafka.bootstrap, env={**FAST_ENV, **_faketime_env(SKEW_SECONDS)}
    )
    local = agent_factory(name="local", kafka=kafka.bootstrap, env=FAST_ENV)
    peer(ahead, local)
    # The skew is real: the skewed agent's timestamps run ahead of ours.
    wait_for("a send timestamp", lambda: _wall_clock(ahead) > 0)
    assert _wall_clock(ahead) - time.time() > SKEW_SECONDS - 30

    ttl = {"Check": {"CheckID": "", "TTL": "600s", "Status": "passing"}}
    register(ahead, "web-1", "web", 8080, **ttl)
    register(local, "api-1", "api", 9090)
    export(ahead, {"web": ["local"]})
    export(local, {"api": ["ahead"]})
    wait_for("web on local", lambda: len(imported(local, "web", "ahead")) == 1)
    wait_for("api on ahead", lambda: len(imported(ahead, "api", "local")) == 1)

    httpx.put(f"{ahead.url}/v1/agent/check/fail/service:web-1", timeout=5).raise_for_status()
    wait_for(
        "critical on local",
        lambda: imported(local, "web", "ahead")[0]["Checks"][0]["Status"] == "critical",
    )
    # Several heartbeat intervals later neither side thinks the other is silent.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert state(ahead, "local") == "ACTIVE"
        assert state(local, "ahead") == "ACTIVE"
        time.sleep(0.1)
