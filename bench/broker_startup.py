"""Measure the dev broker: cold start (jars cached, new data dir) and resident memory.

    .venv/bin/python bench/broker_startup.py [--runs 5]

Cold start = from launching the JVM to the first answered metadata request, on a fresh data
dir (format included). RSS is read from /proc once ready and again after 10,000 records.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from agent import kafka_client
from agent.devbroker import DevBroker


async def _load(bootstrap: str) -> None:
    await kafka_client.create_topic(bootstrap, "bench-load", compacted=False)
    async with kafka_client.producer(bootstrap, linger_ms=5) as producer:
        for batch in range(100):
            futures = [
                await producer.send("bench-load", value=b"x" * 200, key=b"%d" % (batch * 100 + i))
                for i in range(100)
            ]
            for future in futures:
                await future


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    starts: list[float] = []
    rss_ready: list[int] = []
    rss_loaded: list[int] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            broker = DevBroker(Path(tmp) / "b")
            began = time.monotonic()
            broker.start()  # includes formatting the log dir
            broker.wait_ready()
            starts.append(time.monotonic() - began)
            rss_ready.append(broker.rss_bytes())
            anyio.run(_load, broker.bootstrap)
            rss_loaded.append(broker.rss_bytes())
            broker.stop()
    mib = 1024 * 1024
    print(f"kafka {broker.version}, {args.runs} runs")
    print(
        "cold start (format + JVM + first metadata answer): "
        f"median {statistics.median(starts):.2f}s "
        f"min {min(starts):.2f}s max {max(starts):.2f}s"
    )
    print(f"RSS when ready: median {statistics.median(rss_ready) / mib:.0f} MiB")
    print(f"RSS after 10,000 records: median {statistics.median(rss_loaded) / mib:.0f} MiB")


if __name__ == "__main__":
    main()
