"""Propagation benchmark: a change on cluster A until it is visible through B's HTTP API.

    .venv/bin/python bench/propagation.py [--changes 1000] [--json bench/results/propagation.json]

Starts its own broker and two agent processes (east exports `bench` to west), then measures
(the measurement code is bench/latency.py, shared with bench/suite.py):
- establish: POST /v1/peering/establish until both sides report ACTIVE;
- floor: a bare aiokafka produce -> consume round trip on the same broker (acks=all,
  idempotent; a compacted topic with the stream's settings, a stream-sized record);
- propagation: PUT /v1/agent/service/register on east until west's blocking query
  (`/v1/health/service/bench?peer=east&index=N`, opened before the change) returns the new
  value, one change at a time;
- optionally (--polling N) the same change as seen by a client polling west without index.
After a warm-up, floor and propagation samples alternate, each after the same short pause, so
both are measured under the same conditions. Figures are medians and p99 over all samples;
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anyio
import latency  # bench/ is on sys.path when a script here runs
from agents import broker_and_pair, export

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1000, help="measured changes")
    parser.add_argument("--warm-floor", type=int, default=latency.WARM_FLOOR,
                        help="unmeasured floor round trips first")  # fmt: skip
    parser.add_argument("--warm-changes", type=int, default=latency.WARM_CHANGES,
                        help="unmeasured changes first")  # fmt: skip
    parser.add_argument("--polling", type=int, default=100,
                        help="changes seen by a polling client (0: none)")  # fmt: skip
    parser.add_argument("--cpu-changes", type=int, default=300,
                        help="changes to measure each process's CPU over (0: skip)")  # fmt: skip
    parser.add_argument("--client", choices=["lean", "aiohttp"], default="lean",
                        help="the watcher's HTTP client (see bench/lean_http.py)")  # fmt: skip
    parser.add_argument("--compare", choices=["lean", "aiohttp"], default=None,
                        help="also watch each sample's change through this client")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, broker_and_pair(Path(tmp)) as pair:
        broker, east, west, establish_seconds = pair
        export(east, latency.SERVICE, ["west"])
        samples = anyio.run(
            lambda: latency.measure(
                broker.bootstrap, east.url, [(west.url, "east")], args.changes,
                warm_floor=args.warm_floor, warm_changes=args.warm_changes,
                polling=args.polling, client_kind=args.client, compare=args.compare,
            )
        )  # fmt: skip
        cpu = {}
        if args.cpu_changes and broker.pid is not None:
            pids = {"east": east.process.pid, "west": west.process.pid, "broker": broker.pid}
            cpu = anyio.run(
                latency.cpu_per_change, east.url, [(west.url, "east")], args.cpu_changes,
                pids, args.client,
            )  # fmt: skip
    figures = samples.report()
    report = {
        "floor_round_trip": figures["floor"],
        "establish_seconds": round(establish_seconds, 3),
        "propagation_register_to_blocking_query": figures["propagation"],
        "ratio_p50_to_floor": figures["ratio_p50_to_floor"],
        "register_put": figures["register"],
        "method": {
            "warm_floor": args.warm_floor,
            "warm_changes": args.warm_changes,
            "pause_s": latency.pause_for(1),
            "interleaved": True,
            "client": args.client,
        },
    }
    if "compared" in figures:
        report["compared"] = figures["compared"]
    if "propagation_polling" in figures:
        report["propagation_polling"] = figures["propagation_polling"]
    if cpu:
        report["cpu_ms_per_change"] = cpu
    print(json.dumps(report, indent=2))
    floor, prop = report["floor_round_trip"], report["propagation_register_to_blocking_query"]
    print(
        f"floor p50 {floor['p50_ms']} ms p99 {floor['p99_ms']} ms; propagation p50"
        f" {prop['p50_ms']} ms p99 {prop['p99_ms']} ms; {report['ratio_p50_to_floor']}x floor"
    )
    if "compared" in report:
        other = report["compared"]
        print(
            f"the same changes through {other['client']}: propagation p50"
            f" {other['propagation']['p50_ms']} ms; {other['ratio_p50_to_floor']}x floor"
        )
    if cpu:
        print("CPU per change: " + ", ".join(f"{name} {ms} ms" for name, ms in cpu.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
