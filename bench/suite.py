"""The whole benchmark (issue 8): one broker, real agent processes, a JSON report and a table.

    .venv/bin/python bench/suite.py [--quick] [--json bench/results/suite.json]

Figures (medians; p99 where it is a latency; nothing is asserted):
- floor: bare aiokafka produce (acks=all, idempotent) -> consume round trip on the same
  broker, a stream-sized record on a compacted topic with the stream's settings;
- establish: token -> both sides ACTIVE;
- propagation: register on east -> visible through west's blocking query (opened before the
  change, as a watcher has it), p50/p99 and the ratio of its p50 to the floor's; also the
  register PUT alone and the change as a polling client sees it, and again with 200 idle
  blocking queries open on other services on each agent. After a warm-up, floor and
  propagation samples alternate, each after the same pause, so both run under the same
  conditions (bench/latency.py, shared with bench/propagation.py). The watcher's HTTP client
  is bench/lean_http.py, with next to no cost of its own; each sample also has a change seen
  through aiohttp, as a Python watcher sees it, against the same floor; and the floor
  across two processes (the floor's record handed to a receiver process that slept since
  the last one, as between two clusters), with propagation's ratio to it; and a change
  through the essentials pair (bench/essentials.py: the work the design cannot do without,
  with the agent's own code and none of its framework), against the same floor;
- throughput: a services file of N instances (N/10 services x 10) loaded on east until west
  imported all N; end to end (file load included) and on the stream alone (from west's first
  imported instance to its last); then every instance changed once (N updates);
- CPU per event of encode + encrypt + decrypt + decode + apply in one process (no Kafka);
- cold import: west restarted with its imported set and stream cursor erased, catching up on
  the stream of N instances: seconds from process start and peak RSS (VmHWM) of the process;
- fan-out: east exports to P peerings and a change is visible through all P blocking
  queries (all opened before the change), p50/p99 over (change, peer), with a floor
  measured alongside. Each peer is its own dialer agent process (a token names the
  dialer's cluster), all of them on the same two cores;
- quiet peerings: CPU of both agents and heartbeat bytes/s (record key + value, without
  Kafka framing) with P idle peerings at the default 5 s heartbeat interval.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from agent import crypto
from agent.devbroker import DevBroker
from agent.wire import keys
from agent.wire.envelope import encode_event
from agent.wire.events import Heartbeat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency
import skeleton
import watchers
from agents import Agent, establish, export

REPO = Path(__file__).resolve().parents[1]
BEGAN = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - BEGAN:6.1f}s] {message}", file=sys.stderr, flush=True)


# Fan-out rounds come after the rest (broker and client warm): a shorter warm-up, enough to
# warm the peer agents that join the round. 30 changes, not 10: right after 50 agents and
# their streams start, the first ~13 changes to all 50 take 135-400 ms (the broker works
# twice as hard as later, every peer is late), so a 50-peer round run alone (`--peers 50`)
# measured that transient in its p99 (259-295 ms against 72-133 ms a minute later).
FANOUT_WARM_FLOOR = 50
FANOUT_WARM_CHANGES = 30
# Idle blocking queries on other services held on each agent (bench/watchers.py) in the
# round after the headline propagation: Prometheus' Consul SD holds one per service.
WATCHERS = 200


def services_file(path: Path, count: int, port: int) -> None:
    """``count`` instances of ``count // 10`` services (10 each), written atomically."""
    services = [
        {"ID": f"svc-{n // 10}-{n % 10}", "Name": f"svc-{n // 10}",
         "Address": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", "Port": port,
         "Tags": ["v1"], "Meta": {"team": "bench"}}
        for n in range(count)
    ]  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"services": services}))
    tmp.replace(path)


def wait_imported(west: Agent, peer: str, count: int, timeout: float) -> tuple[float, float]:
    """(first time west imported >0 changes of this round, time it has all ``count``)."""
    first = float("nan")
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        imported = west.metric("peering_imported_instances", peer)
        now = time.perf_counter()
        if imported > 0 and first != first:
            first = now
        if imported >= count:
            return first, now
        time.sleep(0.05)
    raise RuntimeError(f"west imported only {imported} of {count}")


def wait_updated(west: Agent, peer: str, applied_before: float, count: int) -> tuple[float, float]:
    first = float("nan")
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        applied = west.metric("peering_events_applied_total", peer, 'type="instance_upsert"')
        now = time.perf_counter()
        if applied > applied_before and first != first:
            first = now
        if applied - applied_before >= count:
            return first, now
        time.sleep(0.05)
    raise RuntimeError("updates did not arrive")


def stream_rate(count: int, first: float, done: float) -> int | None:
    """Changes/s from west's first to its last import; None when too quick to time (<0.25 s)."""
    return round(count / (done - first)) if done - first >= 0.25 else None


def erase_import(data_dir: Path, peer: str) -> None:
    """Offline, agent stopped: forget what ``peer`` sent, so the importer starts cold.

    The bench edits the agent's database directly (the agent has no verb for this);
    the peering itself and its keys stay.
    """
    conn = sqlite3.connect(data_dir / "agent.db")
    with conn:
        ids = [
            r[0] for r in conn.execute("SELECT peering_id FROM peerings WHERE name = ?", (peer,))
        ]
        conn.execute("DELETE FROM imported WHERE peer = ?", (peer,))
        for peering_id in ids:
            conn.execute("DELETE FROM import_cursor WHERE peering_id = ?", (peering_id,))
    conn.close()


# Propagation with a large catalog: fewer samples than the headline figure (each size has its
# own agents to warm), the same interleaved floor.
SIZE_CHANGES = 60
SIZE_WARM_FLOOR = 50
SIZE_WARM_CHANGES = 10


def catalog_round(work: Path, bootstrap: str, count: int, report: dict[str, Any]) -> None:
    """Throughput (load, then update every instance), propagation of one change with
    ``count`` instances in both catalogs, and cold import, for ``count`` instances."""
    svc = work / f"services-{count}.json"
    services_file(svc, 0, 1)
    east = Agent(f"east{count}", bootstrap, work, heartbeat=5, services_file=svc)
    west = Agent(f"west{count}", bootstrap, work, heartbeat=5)
    agents = [east, west]
    try:
        # A token names the dialer's cluster: the PeerName on east is west's agent name.
        establish(east, west, acceptor_name="east")
        config = {"Kind": "exported-services", "Name": "default",
                  "Services": [{"Name": "*", "Consumers": [{"Peer": west.name}]}]}  # fmt: skip
        httpx.put(f"{east.url}/v1/config", json=config, timeout=30).raise_for_status()
        started = time.perf_counter()
        services_file(svc, count, 8080)
        first, done = wait_imported(west, "east", count, timeout=900)
        load = {
            "instances": count,
            "end_to_end_per_s": round(count / (done - started)),
            "stream_per_s": stream_rate(count, first, done),
            "seconds": round(done - started, 2),
        }
        applied = west.metric("peering_events_applied_total", "east", 'type="instance_upsert"')
        started = time.perf_counter()
        services_file(svc, count, 9090)
        first, done = wait_updated(west, "east", applied, count)
        update = {
            "instances": count,
            "end_to_end_per_s": round(count / (done - started)),
            "stream_per_s": stream_rate(count, first, done),
            "seconds": round(done - started, 2),
        }
        west.stop()
        erase_import(west.data_dir, "east")
        west = Agent(west.name, bootstrap, work, heartbeat=5)
        agents[1] = west
        _, done = wait_imported(west, "east", count, timeout=900)
        cold = {
            "instances": count,
            "stream_records": count * 2,
            "seconds_from_process_start": round(done - west.started, 2),
            "peak_rss_mb": round(west.peak_rss_mb(), 1),
        }
        # "*" is exported: the bench service joins the same stream as the count instances.
        samples = anyio.run(
            lambda: latency.measure(
                bootstrap, east.url, [(west.url, "east")], SIZE_CHANGES,
                warm_floor=SIZE_WARM_FLOOR, warm_changes=SIZE_WARM_CHANGES,
            )
        )  # fmt: skip
        figures = samples.report()
        report["propagation_by_size"].append(
            {
                "instances": count,
                "floor": figures["floor"],
                "propagation": figures["propagation"],
                "ratio_p50_to_floor": figures["ratio_p50_to_floor"],
                # After the watched reads: they load the imported view (?peer= answers from
                # memory), so this is the importing agent's peak while serving them.
                "west_peak_rss_mb": round(west.peak_rss_mb(), 1),
            }
        )
        report["throughput_load"].append(load)
        report["throughput_update"].append(update)
        report["cold_import"].append(cold)
    finally:
        for agent in agents:
            agent.stop()


def with_watchers(bootstrap: str, east: Agent, west: Agent, changes: int) -> dict[str, Any]:
    """Propagation while Prometheus' Consul service discovery would hold a blocking query per
    service on both agents: ``WATCHERS`` on east's local services, as many on what west
    imports from east, none of them on the service that changes."""
    watchers.export_services(east, west, WATCHERS)
    with (
        watchers.holding(east.url, WATCHERS, "dc=east"),
        watchers.holding(west.url, WATCHERS, "peer=east"),
    ):
        samples = anyio.run(
            lambda: latency.measure(
                bootstrap, east.url, [(west.url, "east")], changes,
                warm_floor=1000, warm_changes=100,
            )
        )  # fmt: skip
    figures = samples.report()
    return {
        "queries_on_each_agent": WATCHERS,
        "floor": figures["floor"],
        "propagation": figures["propagation"],
        "ratio_p50_to_floor": figures["ratio_p50_to_floor"],
    }


def heartbeat_bytes() -> int:
    """Size of one encrypted heartbeat record (key + value) as it is on the wire."""
    root = crypto.hkdf(b"bench", salt=b"", info=b"bench root")
    keyring = keys.new_keyring(root, "bench-peering", keys.Direction.ACCEPTOR_TO_DIALER)
    key, value = encode_event(keyring, Heartbeat(Epoch=1, Seq=12345, SentAt=time.time()))
    return len(key or b"") + len(value)


def fanout_round(
    work: Path, bootstrap: str, peer_counts: list[int], changes: int, quiet_seconds: float,
    report: dict[str, Any],
) -> None:  # fmt: skip
    """One exporting agent, one dialer agent per peer (a token names the dialer's cluster)."""
    most = max(peer_counts)
    east = Agent("fan-east", bootstrap, work, heartbeat=5)
    wests: list[Agent] = []
    try:
        establish_times = []
        for k in range(most):
            wests.append(Agent(f"w{k}", bootstrap, work, heartbeat=5))
            establish_times.append(establish(east, wests[-1]))
        report["establish_seconds_fanout_median"] = round(statistics.median(establish_times), 3)
        for peers in peer_counts:
            export(east, latency.SERVICE, [f"w{k}" for k in range(peers)])
            time.sleep(1)
            targets = [(west.url, "fan-east") for west in wests[:peers]]
            measure = functools.partial(
                latency.measure, bootstrap, east.url, targets, changes,
                warm_floor=FANOUT_WARM_FLOOR, warm_changes=FANOUT_WARM_CHANGES,
            )  # fmt: skip
            samples = anyio.run(measure)
            figures = samples.report()
            floor = figures["floor"]
            report["fanout"].append(
                {
                    "peers": peers,
                    **figures["propagation"],
                    "floor_p50_ms": floor["p50_ms"],
                    "floor_p99_ms": floor["p99_ms"],
                    "register_p50_ms": figures["register"]["p50_ms"],
                }
            )
        time.sleep(6)  # let the last changes and heartbeats settle
        # One scrape at each end, outside the CPU window: a scrape of a 50-peer agent costs
        # tens of ms of its CPU, and one per peer (100 in all) was most of what got measured.
        beats, beats_at = east.published_total(), time.perf_counter()
        cpu = (east.cpu_seconds(), sum(w.cpu_seconds() for w in wests))
        time.sleep(quiet_seconds)
        cpu_after = (east.cpu_seconds(), sum(w.cpu_seconds() for w in wests))
        beats_after, beats_after_at = east.published_total(), time.perf_counter()
        per_s = (beats_after - beats) / (beats_after_at - beats_at)
        report["quiet"] = {
            "peers": most,
            "heartbeat_interval_s": 5,
            "exporter_agent_cpu_percent": round(100 * (cpu_after[0] - cpu[0]) / quiet_seconds, 2),
            "each_peer_agent_cpu_percent": round(
                100 * (cpu_after[1] - cpu[1]) / quiet_seconds / most, 2
            ),
            "heartbeats_per_s_one_direction": round(per_s, 2),
            "heartbeat_bytes_per_s_one_direction": round(per_s * heartbeat_bytes()),
        }
    finally:
        east.stop()
        for west in wests:
            west.stop()


def codec_cost(instances: int) -> dict[str, float]:
    """µs per event for encode+encrypt and decrypt+decode+apply (batched ingest), one core."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "codec_throughput.py"),
         "--instances", str(instances)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    rates: dict[str, float] = {}
    stages: dict[str, float] = {}
    for line in out.stdout.splitlines():
        if "records/s" in line:
            label, rest = line.split(":", 1)
            rates[label.strip()] = float(rest.split()[0].replace(",", ""))
        elif line.startswith("  "):  # a profile stage: "  <stage>   <µs>"
            stage, _, us = line.strip().rpartition(" ")
            stages[stage.strip()] = float(us)
    encode = 1e6 / rates["encode"]
    ingest = 1e6 / rates["ingest (500)"]
    return {
        "encode_encrypt_us": round(encode, 1),
        "decrypt_decode_apply_us": round(ingest, 1),
        "total_us": round(encode + ingest, 1),
        "rebuild_us": round(1e6 / rates["rebuild"], 1),
        "profile_us": stages,
    }


def wake_penalty(samples: int) -> dict[str, dict[str, float]]:
    """bench/wake_penalty.py: µs of small work back to back and after a 20 ms sleep."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "wake_penalty.py"), "--samples", str(samples)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    figures: dict[str, dict[str, float]] = {}
    for line in out.stdout.splitlines()[1:]:
        name, warm, _, cold, _, _factor = line.rsplit(maxsplit=5)
        figures[name.strip()] = {"back_to_back_us": float(warm), "after_pause_us": float(cold)}
    return figures


def table(report: dict[str, Any]) -> str:
    floor, prop = report["floor"], report["propagation"]
    ratio = report["ratio_p50_to_floor"]
    rows = [
        ("floor (aiokafka produce->consume)", f"p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms",
         ""),
        ("propagation (register -> west blocking query)",
         f"p50 {prop['p50_ms']} ms, p99 {prop['p99_ms']} ms, {ratio:.2f}x floor",
         "p50 <= 2x floor, p99 < 50 ms"),
        ("  of which the register PUT on east",
         f"p50 {report['register']['p50_ms']} ms, p99 {report['register']['p99_ms']} ms", ""),
    ]  # fmt: skip
    if "floor_two_processes" in report:
        handoff = report["floor_two_processes"]
        rows.append(("  floor across two processes (produce -> another process has it)",
                     f"p50 {handoff['p50_ms']} ms, p99 {handoff['p99_ms']} ms; propagation"
                     f" {report['ratio_p50_to_floor_two_processes']:.2f}x it", ""))  # fmt: skip
    if "essentials" in report:
        alone = report["essentials"]
        rows.append(("  the essential work alone, without the agent's framework (interleaved)",
                     f"p50 {alone['p50_ms']} ms, p99 {alone['p99_ms']} ms,"
                     f" {alone['ratio_p50_to_floor']:.2f}x floor", ""))  # fmt: skip
    if "compared" in report:
        other = report["compared"]
        prop = other["propagation"]
        rows.append((f"  the same changes, an {other['client']} watcher (interleaved)",
                     f"p50 {prop['p50_ms']} ms, p99 {prop['p99_ms']} ms,"
                     f" {other['ratio_p50_to_floor']:.2f}x floor", ""))  # fmt: skip
    if "propagation_polling" in report:
        poll = report["propagation_polling"]
        rows.append(("propagation (register -> west polled, no index)",
                     f"p50 {poll['p50_ms']} ms, p99 {poll['p99_ms']} ms", ""))  # fmt: skip
    if "propagation_with_watchers" in report:
        busy = report["propagation_with_watchers"]
        prop = busy["propagation"]
        rows.append((f"propagation, {busy['queries_on_each_agent']} blocking queries open on"
                     " other services on each agent",
                     f"p50 {prop['p50_ms']} ms, p99 {prop['p99_ms']} ms,"
                     f" {busy['ratio_p50_to_floor']:.2f}x floor", ""))  # fmt: skip
    rows += [
        ("establish (token -> both ACTIVE)", f"{report['establish_seconds']:.2f} s", ""),
        ("CPU per event (encode+encrypt+decrypt+decode+apply)",
         f"{report['codec']['total_us']} us", ""),
    ]  # fmt: skip
    for kind in ("load", "update"):
        for run in report[f"throughput_{kind}"]:
            stream = f"{run['stream_per_s']:,}/s" if run["stream_per_s"] else "(too quick)"
            rates = f"{run['end_to_end_per_s']:,}/s end to end, {stream} stream"
            rows.append((f"throughput {kind} {run['instances']:,} instances", rates, ">= 20,000/s"))
    for size in report.get("propagation_by_size", []):
        prop = size["propagation"]
        figure = (
            f"p50 {prop['p50_ms']} ms, p99 {prop['p99_ms']} ms, {size['ratio_p50_to_floor']:.2f}x"
            f" floor (floor p50 {size['floor']['p50_ms']} ms); importer peak RSS"
            f" {size['west_peak_rss_mb']} MB"
        )
        rows.append((f"propagation, {size['instances']:,} instances in the catalog", figure, ""))
    for cold in report["cold_import"]:
        target = "< 10 s, < 300 MB" if cold["instances"] >= 100_000 else ""
        figure = f"{cold['seconds_from_process_start']} s, {cold['peak_rss_mb']} MB RSS"
        rows.append((f"cold import {cold['instances']:,} instances", figure, target))
    for fan in report["fanout"]:
        target = "p99 < 250 ms" if fan["peers"] >= 50 else ""
        figure = f"p50 {fan['p50_ms']} ms, p99 {fan['p99_ms']} ms"
        if "floor_p50_ms" in fan:
            figure += f" (floor p50 {fan['floor_p50_ms']} ms)"
        rows.append((f"fan-out to {fan['peers']} peers", figure, target))
    if "quiet" in report:
        q = report["quiet"]
        figure = (
            f"CPU {q['exporter_agent_cpu_percent']}% exporter, {q['each_peer_agent_cpu_percent']}%"
            " per peer agent,"
            f" {q['heartbeat_bytes_per_s_one_direction']} B/s each way"
        )
        rows.append((f"quiet, {q['peers']} peers (heartbeat {q['heartbeat_interval_s']} s)",
                     figure, ""))  # fmt: skip
    wake = report["machine"].get("wake_penalty", {}).get("SQLite write transaction (no fsync)")
    if wake:
        figure = (
            f"{wake['back_to_back_us']} us back to back, {wake['after_pause_us']} us after"
            " 20 ms idle"
        )
        rows.append(("machine: a SQLite write transaction (bench/wake_penalty.py)", figure, ""))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':<{value_width}}  target"]
    lines += [f"{a:<{width}}  {b:<{value_width}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--sizes", default="1000,10000,100000", help="catalog sizes")
    parser.add_argument("--peers", default="1,10,50", help="fan-out peer counts")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "suite.json")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [int(n) for n in args.sizes.split(",")]
    peer_counts = [1, 5] if args.quick else [int(n) for n in args.peers.split(",")]
    changes = 50 if args.quick else 300
    polling = 20 if args.quick else 100
    fan_changes = 20 if args.quick else 60
    # --quick: the short warm-up of before session 5 (the ratio comes out flattering).
    warm = {"warm_floor": 200, "warm_changes": 30} if args.quick else {
        "warm_floor": latency.WARM_FLOOR, "warm_changes": latency.WARM_CHANGES,
    }  # fmt: skip
    report: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "throughput_load": [], "throughput_update": [], "cold_import": [], "fanout": [],
        "propagation_by_size": [],
    }  # fmt: skip
    began = time.perf_counter()
    progress("machine wake penalty")
    report["machine"]["wake_penalty"] = wake_penalty(30 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = DevBroker(work / "broker")
        broker.start()
        broker.wait_ready()
        try:
            receiver = skeleton.start_receiver(broker.bootstrap, work / "receiver.log")
            pair = skeleton.start_essentials(broker.bootstrap, work / "essentials.log")
            east = Agent("east", broker.bootstrap, work)
            west = Agent("west", broker.bootstrap, work)
            try:
                progress("establish")
                report["establish_seconds"] = round(establish(east, west), 3)
                export(east, latency.SERVICE, ["west"])
                progress("floor + propagation (warm-up, then interleaved)")
                samples = anyio.run(
                    lambda: latency.measure(
                        broker.bootstrap, east.url, [(west.url, "east")], changes,
                        polling=polling, compare="aiohttp", receiver=receiver.url,
                        essentials=(pair[0].url, (pair[1].url, "east")), **warm,
                    )
                )  # fmt: skip
                progress(f"propagation with {WATCHERS} blocking queries open on each agent")
                report["propagation_with_watchers"] = with_watchers(
                    broker.bootstrap, east, west, changes
                )
            finally:
                east.stop()
                west.stop()
                receiver.stop()
                for process in pair:
                    process.stop()
            # floor, propagation, ratio_p50_to_floor, register, propagation_polling
            report.update(samples.report())
            report["latency_method"] = {
                "client": "lean (bench/lean_http.py); aiohttp in report['compared']",
                **warm,
                "fanout_warm_floor": FANOUT_WARM_FLOOR,
                "fanout_warm_changes": FANOUT_WARM_CHANGES,
                "pause_s": latency.PAUSE,
                "pause_per_target_s": latency.PAUSE_PER_TARGET,
                "interleaved": True,
                "watcher_first": True,
            }
            progress("codec")
            report["codec"] = codec_cost(20_000)
            for count in sizes:
                progress(f"throughput, propagation and cold import, {count} instances")
                catalog_round(work, broker.bootstrap, count, report)
            progress(f"fan-out to {peer_counts} peers, then quiet")
            fanout_round(work, broker.bootstrap, peer_counts, fan_changes, 20.0, report)
        finally:
            broker.stop()
    report["suite_seconds"] = round(time.perf_counter() - began, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nreport: {args.json} ({report['suite_seconds']} s)")


if __name__ == "__main__":
    main()
