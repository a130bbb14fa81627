"""Propagation benchmark: a change on cluster A until it is visible through B's HTTP API.

    .venv/bin/python bench/propagation.py [--changes 1000] [--json bench/results/propagation.json]

Starts its own broker and two agent processes (east exports `bench` to west), then measures:
- floor: a bare aiokafka produce -> consume round trip on the same broker (acks=all);
- establish: POST /v1/peering/establish until both sides report ACTIVE;
- propagation: PUT /v1/agent/service/register on east until a blocking query on west
  (`/v1/health/service/bench?peer=east&index=N`) returns the new value, one change at a time.
Figures are medians and p99 over all samples; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

from agent import kafka_client
from agent.devbroker import DevBroker, free_port

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": statistics.median(values) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "max_ms": max(values) * 1000,
    }


async def floor_round_trip(bootstrap: str, samples: int) -> list[float]:
    """Bare aiokafka: produce one record (acks=all) and wait until a consumer has it."""
    topic = f"bench-floor-{int(time.time())}"
    await kafka_client.create_topic(bootstrap, topic, compacted=False)
    results: list[float] = []
    async with kafka_client.producer(bootstrap) as producer:
        batches = kafka_client.read_batches(
            bootstrap, topic, stop_at_end=False, poll_interval=0.5
        ).__aiter__()
        await kafka_client.send(producer, topic, b"warm", b"up")
        while not (await batches.__anext__()).records:
            pass
        for i in range(samples):
            started = time.perf_counter()
            await kafka_client.send(producer, topic, b"k", b"%d" % i)
            while not (await batches.__anext__()).records:
                pass
            results.append(time.perf_counter() - started)
        await batches.aclose()  # type: ignore[attr-defined]
    return results


class Agent:
    def __init__(self, name: str, bootstrap: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = (workdir / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--name", name, "--kafka", bootstrap,
             "--http", f"127.0.0.1:{self.port}", "--data-dir", str(workdir / name)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PEERING_HEARTBEAT_INTERVAL": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/status/leader", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"agent {name} did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(15)


def state(agent: Agent, peer: str) -> str:
    answer = httpx.get(f"{agent.url}/v1/peering/{peer}", timeout=5)
    return str(answer.json().get("State")) if answer.status_code == 200 else "-"


def establish(east: Agent, west: Agent) -> float:
    token = httpx.post(f"{east.url}/v1/peering/token", json={"PeerName": "west"}, timeout=10)
    started = time.perf_counter()
    answer = httpx.post(
        f"{west.url}/v1/peering/establish",
        json={"PeerName": "east", "PeeringToken": token.json()["PeeringToken"]},
        timeout=30,
    )
    answer.raise_for_status()
    while state(east, "west") != "ACTIVE" or state(west, "east") != "ACTIVE":
        time.sleep(0.005)
    return time.perf_counter() - started


async def propagation(east: Agent, west: Agent, changes: int) -> list[float]:
    results: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        config = {
            "Kind": "exported-services",
            "Name": "default",
            "Services": [{"Name": "bench", "Consumers": [{"Peer": "west"}]}],
        }
        (await client.put(f"{east.url}/v1/config", json=config)).raise_for_status()
        url = f"{west.url}/v1/health/service/bench"
        for i in range(changes):
            port = 10000 + i
            first = await client.get(url, params={"peer": "east"})
            index = first.headers["X-Consul-Index"]
            started = time.perf_counter()
            body = {"ID": "bench-1", "Name": "bench", "Address": "10.1.1.1", "Port": port}
            (
                await client.put(f"{east.url}/v1/agent/service/register", json=body)
            ).raise_for_status()
            while True:
                answer = await client.get(
                    url, params={"peer": "east", "index": index, "wait": "10s"}
                )
                index = answer.headers["X-Consul-Index"]
                if any(e["Service"]["Port"] == port for e in answer.json()):
                    break
            results.append(time.perf_counter() - started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--floor-samples", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = DevBroker(work / "broker")
        broker.start()
        broker.wait_ready()
        agents: list[Agent] = []
        try:
            floor = anyio.run(floor_round_trip, broker.bootstrap, args.floor_samples)
            east = Agent("east", broker.bootstrap, work)
            agents.append(east)
            west = Agent("west", broker.bootstrap, work)
            agents.append(west)
            establish_seconds = [establish(east, west)]
            samples = anyio.run(propagation, east, west, args.changes)
        finally:
            for agent in agents:
                agent.stop()
            broker.stop()
    report = {
        "floor_round_trip": summary(floor),
        "establish_seconds": establish_seconds[0],
        "propagation_register_to_blocking_query": summary(samples),
    }
    report["ratio_p50_to_floor"] = (
        report["propagation_register_to_blocking_query"]["p50_ms"]
        / report["floor_round_trip"]["p50_ms"]
    )
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
