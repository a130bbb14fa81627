"""The agent processes the benchmarks run, and the HTTP calls that set them up (peering,
exports); shared by suite.py, propagation.py, http_load.py and metrics_scrape.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import latency  # bench/ is on sys.path when a script here runs

from agent.devbroker import DevBroker, free_port
from agent.processes import stop_process

REPO = Path(__file__).resolve().parents[1]


def wait_until_serving(url: str, what: str, timeout: float = 60) -> None:
    """Until ``GET url/v1/status/leader`` answers 200 (the process is up and listening)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/status/leader", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


class Agent:
    """One agent process with its own data dir and HTTP port."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        workdir: Path,
        *,
        heartbeat: float = 1.0,
        services_file: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / name
        args = [sys.executable, "-m", "agent", "agent", "--name", name, "--kafka", bootstrap,
                "--http", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]  # fmt: skip
        if services_file is not None:
            args += ["--services-file", str(services_file)]
        log = (workdir / f"{name}.log").open("ab")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PEERING_HEARTBEAT_INTERVAL": str(heartbeat)},
        )  # fmt: skip
        wait_until_serving(self.url, f"agent {name}")

    def stop(self) -> None:
        stop_process(self.process, 30)

    def cpu_seconds(self) -> float:
        return latency.cpu_seconds(self.process.pid)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def published_total(self) -> float:
        """Every event this agent published, to all peers, from one /metrics scrape."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        family = "peering_events_published_total{"
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(family)
        )

    def metric(self, name: str, peer: str, extra: str = "") -> float:
        """Sum of the samples of ``name`` labelled with ``peer`` (and ``extra``) on /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and f'peer="{peer}"' in line and extra in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def state(agent: Agent, peer: str) -> str:
    answer = httpx.get(f"{agent.url}/v1/peering/{peer}", timeout=10)
    return str(answer.json().get("State")) if answer.status_code == 200 else "-"


def establish(acceptor: Agent, dialer: Agent, acceptor_name: str | None = None) -> float:
    """Token on the acceptor (for the dialer's cluster name) -> establish on the dialer, which
    calls the acceptor ``acceptor_name`` (its agent name by default) -> both ACTIVE; seconds."""
    dialer_name, acceptor_name = dialer.name, acceptor_name or acceptor.name
    token = httpx.post(
        f"{acceptor.url}/v1/peering/token", json={"PeerName": dialer_name}, timeout=10
    )
    token.raise_for_status()
    started = time.perf_counter()
    httpx.post(
        f"{dialer.url}/v1/peering/establish",
        json={"PeerName": acceptor_name, "PeeringToken": token.json()["PeeringToken"]},
        timeout=60,
    ).raise_for_status()
    deadline = time.monotonic() + 60
    while state(acceptor, dialer_name) != "ACTIVE" or state(dialer, acceptor_name) != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"peering {acceptor_name}/{dialer_name} not ACTIVE")
        time.sleep(0.005)
    return time.perf_counter() - started


def export(agent: Agent, service: str, consumers: list[str]) -> None:
    config = {
        "Kind": "exported-services",
        "Name": "default",
        "Services": [{"Name": service, "Consumers": [{"Peer": p} for p in consumers]}],
    }
    httpx.put(f"{agent.url}/v1/config", json=config, timeout=30).raise_for_status()


@contextmanager
def broker_and_pair(work: Path) -> Iterator[tuple[DevBroker, Agent, Agent, float]]:
    """A broker, and east and west agents on it with west peered to east: (broker, east,
    west, seconds to establish). All stopped afterwards."""
    broker = DevBroker(work / "broker")
    broker.start()
    broker.wait_ready()
    agents: list[Agent] = []
    try:
        east = Agent("east", broker.bootstrap, work)
        agents.append(east)
        west = Agent("west", broker.bootstrap, work)
        agents.append(west)
        yield broker, east, west, establish(east, west)
    finally:
        for agent in agents:
            agent.stop()
        broker.stop()
