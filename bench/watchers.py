"""Propagation with many blocking queries open on other services of the same peer.

    .venv/bin/python bench/watchers.py [--watchers 200] [--changes 200] [--on west|east]

Prometheus' Consul service discovery holds one blocking query per service it discovers. This
starts a broker and two agents (east exports ``bench`` and ``--watchers`` other services to
west, one instance each), then measures the propagation figure of bench/propagation.py
(register on east until west's blocking query on ``bench?peer=east`` answers, interleaved with
the floor) three times: with no other query open, with ``--watchers`` idle blocking queries on
the other services held by a separate process, and with none again. The idle queries are on
west's imported catalog (``?peer=east``, by default) or on east's local one (``--on east``,
where each change is a local write). Before per-service wake-ups (docs/performance.md, item
36) every change woke every open query for a read of its own. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import latency  # bench/ is on sys.path when a script here runs
from agents import Agent, broker_and_pair

from agent.processes import stop_process


async def hold(url: str, count: int, query: str) -> None:
    """Keep ``count`` blocking queries open (the ``--hold`` process), as Prometheus' Consul
    service discovery does: each watcher asks again with the index of its last answer."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def watch(k: int) -> None:
            base = f"{url}/v1/health/service/svc-{k}?{query}"
            index: str | None = None
            while True:
                try:
                    answer = await client.get(
                        base if index is None else f"{base}&index={index}&wait=60s"
                    )
                except httpx.TransportError as exc:
                    # A pooled connection the agent closed after its keep-alive timeout, just
                    # as this request went out on it: ask again on another, as Go's HTTP
                    # client under Prometheus does for an idempotent request.
                    print(f"svc-{k}: {exc!r}, asking again", file=sys.stderr, flush=True)
                    await asyncio.sleep(0.1)
                    continue
                index = answer.headers["X-Consul-Index"]

        await asyncio.gather(*(watch(k) for k in range(count)))


def export_services(east: Agent, west: Agent, count: int) -> None:
    """East exports ``bench`` and ``svc-0``...``svc-<count-1>`` to west, and west has
    imported the latter (one instance each; ``bench`` has none until it is measured)."""
    names = [latency.SERVICE] + [f"svc-{k}" for k in range(count)]
    config = {
        "Kind": "exported-services",
        "Name": "default",
        "Services": [{"Name": n, "Consumers": [{"Peer": "west"}]} for n in names],
    }
    httpx.put(f"{east.url}/v1/config", json=config, timeout=30).raise_for_status()
    for k in range(count):
        body = {"ID": f"svc-{k}-1", "Name": f"svc-{k}", "Port": 1000 + k}
        url = f"{east.url}/v1/agent/service/register"
        httpx.put(url, json=body, timeout=10).raise_for_status()
    while len(httpx.get(f"{west.url}/v1/catalog/services?peer=east").json()) < count:
        time.sleep(0.1)


def open_queries(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("peering_http_blocking_queries "):
            return float(line.split()[1])
    return float("nan")  # an agent older than the gauge


@contextmanager
def holding(url: str, count: int, query: str) -> Iterator[None]:
    """``count`` idle blocking queries on ``svc-<k>?<query>`` at ``url``, from another
    process, open while the block runs."""
    holder = subprocess.Popen([sys.executable, __file__, "--hold", url, str(count), query])
    try:
        deadline = time.monotonic() + 10
        while (opened := open_queries(url)) < count:
            if time.monotonic() > deadline or holder.poll() is not None:
                raise RuntimeError(f"only {opened:.0f} of {count} blocking queries open at {url}")
            time.sleep(0.1)
        yield
        # A figure "with N queries open" must not come from fewer: the holder must still run.
        if holder.poll() is not None:
            raise RuntimeError(f"the process holding {count} queries at {url} stopped early")
    finally:
        stop_process(holder, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=200, help="idle queries on west")
    parser.add_argument("--changes", type=int, default=200, help="measured changes a round")
    parser.add_argument("--on", choices=["west", "east"], default="west",
                        help="the agent the idle queries wait on")  # fmt: skip
    parser.add_argument("--hold", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        asyncio.run(hold(args.hold[0], int(args.hold[1]), args.hold[2]))
        return
    count = args.watchers
    with tempfile.TemporaryDirectory() as tmp, broker_and_pair(Path(tmp)) as pair:
        broker, east, west, _ = pair
        export_services(east, west, count)

        def round_(label: str) -> None:
            samples = anyio.run(
                lambda: latency.measure(
                    broker.bootstrap, east.url, [(west.url, "east")], args.changes,
                    warm_floor=3000, warm_changes=200,
                )
            )  # fmt: skip
            report = samples.report()
            floor, prop = report["floor"], report["propagation"]
            print(
                f"{label}: floor p50 {floor['p50_ms']} ms; propagation p50 {prop['p50_ms']}"
                f" ms p99 {prop['p99_ms']} ms; {report['ratio_p50_to_floor']}x floor",
                flush=True,
            )

        round_("no other query open")
        url, query = (west.url, "peer=east") if args.on == "west" else (east.url, "dc=east")
        with holding(url, count, query):
            round_(f"{count} idle queries on other services, on {args.on}")
        time.sleep(1)
        round_("none again")


if __name__ == "__main__":
    main()
