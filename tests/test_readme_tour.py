"""The README's five-minute tour, run as written (on free ports, in a temp dir)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from agent.devbroker import free_port
from tests.agent_fixtures import REPO

README = REPO / "README.md"


def tour_block() -> str:
    """The first sh block under '## Five-minute tour'."""
    text = README.read_text()
    section = text[text.index("## Five-minute tour") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the tour has no sh block"
    return match.group(1)


def test_readme_tour_runs(tmp_path: Path) -> None:
    """Broker, two agents, token, establish, register, export, imported view, replay: exit 0."""
    script = tour_block()
    # The same commands, moved off the well-known ports so they cannot meet a real agent.
    for port in ("9092", "8500", "8501"):
        script = script.replace(port, str(free_port()))
    script = script.replace(".venv/bin/peering", str(REPO / ".venv" / "bin" / "peering"))
    log = tmp_path / "tour.out"
    # A file, not a pipe: the background processes keep their copy of stdout open.
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the tour's processes go with it
            env={k: v for k, v in os.environ.items() if not k.startswith("PEERING_")},
        )
    try:
        process.wait(timeout=150)
    finally:
        # The tour leaves broker and agents running, as a person would: stop them all
        # (the broker's JVM runs in a session of its own: it is found by its data dir).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        subprocess.run(["pkill", "-TERM", "-f", "--", str(tmp_path)], check=False)
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert process.returncode == 0, output
    assert "established" in output.lower(), output
    assert "web-1" in output, output
    assert "instance_upsert" in output or "upsert" in output, output
