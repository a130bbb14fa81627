"""Scrape cost of an agent with 50 peerings and 10,000 imported instances.

    .venv/bin/python bench/metrics_scrape.py [--peers 50] [--instances 10000]

Prepares a data dir offline (10,000 instances imported from peer-00 written through the
store), starts one agent on it, generates a token for each of 50 peers (each peering gets
its full set of series, see docs/metrics.md), then measures /metrics: its size, the time of
100 GETs from this process, and `scrape_duration_seconds` as a real Prometheus (Debian's
package) reports it over 30 one-second scrapes. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agent.devbroker import DevBroker
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.store import Store

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents import Agent  # noqa: E402 - bench/ is on sys.path when a script here runs

from tests.prometheus_fixture import start_prometheus  # noqa: E402 - after the path fix


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--instances", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = Store.open(work / "bench")
        check = HealthCheck(CheckID="ttl", Name="ttl", Status=CheckStatus.PASSING)
        store.replace_imported(
            "peer-00",
            (
                ServiceInstance(
                    ID=f"svc-{i // 10}-{i % 10}",
                    Name=f"svc-{i // 10}",
                    Address="10.0.0.1",
                    Port=8000 + i % 10,
                    Checks=(check,),
                )
                for i in range(args.instances)
            ),
        )
        store.close()
        broker = DevBroker(work / "broker")
        broker.start()
        broker.wait_ready()
        agent = Agent("bench", broker.bootstrap, work)
        url = agent.url
        prometheus = None
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                for i in range(args.peers):
                    client.post(
                        "/v1/peering/token", json={"PeerName": f"peer-{i:02d}"}
                    ).raise_for_status()
                imported = client.get("/v1/catalog/services", params={"peer": "peer-00"}).json()
                body = client.get("/metrics").content
                timings = []
                for _ in range(100):
                    started = time.perf_counter()
                    client.get("/metrics").raise_for_status()
                    timings.append(time.perf_counter() - started)
            series = sum(1 for line in body.decode().splitlines() if not line.startswith("#"))
            prometheus = start_prometheus(work / "prometheus", targets=(f"127.0.0.1:{agent.port}",))
            time.sleep(30)
            durations = [
                float(value[1])
                for result in prometheus.api(
                    "/api/v1/query", {"query": "scrape_duration_seconds[30s]"}
                )["result"]
                for value in result["values"]
            ]
            print(f"peerings: {args.peers}, imported instances: {args.instances} "
                  f"({len(imported)} services from peer-00)")  # fmt: skip
            print(f"/metrics: {len(body) / 1024:.0f} KiB, {series} series")
            print(
                f"GET /metrics from a client: median {statistics.median(timings) * 1000:.1f} ms, "
                f"max {max(timings) * 1000:.1f} ms"
            )
            print(
                f"Prometheus scrape_duration_seconds over {len(durations)} scrapes: "
                f"median {statistics.median(durations) * 1000:.1f} ms, "
                f"max {max(durations) * 1000:.1f} ms"
            )
        finally:
            if prometheus is not None:
                prometheus.stop()
            agent.stop()
            broker.stop()


if __name__ == "__main__":
    main()
