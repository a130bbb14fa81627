"""Real ``peering agent`` processes for tests: free loopback port, tmp data dir, always stopped.

Fixtures: ``agent_process`` (one agent per test), ``agent_module`` (one agent shared by a test
module; tests use distinct service names) and ``agent_factory`` (start any number with extra
flags; every one is stopped at the end, also when the test fails). ``AgentProcess`` has
``kill()`` (SIGKILL), ``stop()`` (SIGTERM, returns the exit code) and ``restart()`` (same port,
same data dir).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from agent.devbroker import free_port
from agent.processes import kill_process, stop_process

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
AGENT_ENTRY = "from agent.cli import main; main()"


def peering_command(*args: str) -> list[str]:
    """argv that runs the ``peering`` CLI from this checkout (no install needed)."""
    return [sys.executable, "-c", AGENT_ENTRY, *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERING_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


class AgentProcess:
    """One agent subprocess with its port, data dir and log file."""

    def __init__(
        self,
        workdir: Path,
        name: str = "alpha",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        kafka: str = "127.0.0.1:9092",
    ) -> None:
        self.workdir = workdir
        self.kafka = kafka
        self.name = name
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.log_path = workdir / "agent.log"
        self.extra_args = list(extra_args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def argv(self) -> list[str]:
        return peering_command(
            "agent",
            "--name",
            self.name,
            "--kafka",
            self.kafka,
            "--http",
            self.addr,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        )

    def start(self, retry_port: bool = True) -> AgentProcess:
        """Spawn the process and wait until /v1/status/leader answers.

        If another process grabbed the free port in between, retry once on a new port
        (``restart`` passes False: it must keep the address).
        """
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=cli_env(self.env), cwd=REPO
            )
        try:
            self.wait_ready()
        except RuntimeError:
            if not (retry_port and "cannot listen on" in self.log()):
                raise
            self.kill()
            self.port = free_port()
            return self.start(retry_port=False)
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v1/status/leader", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"agent not ready after {READY_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in ``timeout``. Returns the exit code."""
        proc, self.proc = self.proc, None
        return 0 if proc is None else stop_process(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_process(proc)

    def restart(self) -> AgentProcess:
        """Start again on the same port and data dir (after ``kill`` or ``stop``)."""
        self.kill()
        return self.start(retry_port=False)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15.0)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents with ``factory(name=..., extra_args=[...])``; all are stopped at the end."""
    started: list[AgentProcess] = []

    def factory(
        name: str = "alpha",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start: bool = True,
        kafka: str = "127.0.0.1:9092",
    ) -> AgentProcess:
        agent = AgentProcess(tmp_path / f"{name}-{len(started)}", name, extra_args, env, kafka)
        started.append(agent)
        return agent.start() if start else agent

    try:
        yield factory
    finally:
        for agent in started:
            agent.kill()


@pytest.fixture
def agent_process(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    """One running agent named ``alpha`` for this test."""
    return agent_factory()


@pytest.fixture(scope="module")
def agent_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One running agent shared by a test module (use distinct service names per test)."""
    agent = AgentProcess(tmp_path_factory.mktemp("agent"), "alpha")
    try:
        agent.start()
        yield agent
    finally:
        agent.kill()
