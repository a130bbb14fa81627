"""``peering demo`` end to end: real Kafkas, three agent processes, exit 0, every section shown."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.agent_fixtures import REPO, cli_env

DEMO_TIMEOUT = 180


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_runs_unattended_and_shows_every_section() -> None:
    """The demo peers three clusters, propagates a health change, replays and stops: exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env=cli_env(),
        cwd=REPO,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out[-4000:]}\n{done.stderr[-4000:]}"
    assert "Traceback" not in out + done.stderr
    for cluster in ("east", "west", "partner"):
        assert f"{cluster}: peerings" in out
        assert f"{cluster}: imported services" in out
    assert out.count("ACTIVE") >= 4, "both sides of both peerings are ACTIVE"
    for service in ("api-1", "billing-1", "db-1", "web-1", "web-2"):
        assert service in out
    assert re.search(r"web-1 is critical on west \(imported from east\) after \d+ ms", out)
    assert re.search(r"web-1 is critical on partner \(imported from east\) after \d+ ms", out)
    assert re.search(r"http://127\.0\.0\.1:\d+/metrics", out)
    assert 'peering_state{peer="east",state="ACTIVE"} 1.0' in out
    assert "peering replay --peer east --data-dir" in out
    assert re.search(r"instance_upsert\s+web/web-1 10\.0\.0\.1:8080 critical", out)
    assert "stopped east, west, partner, kafka main, kafka partner" in out
    assert "demo finished" in out
