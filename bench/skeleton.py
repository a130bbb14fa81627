"""The thinnest agent pair a change could cross: how close to the floor two Python processes
with HTTP on both ends can get on this machine, next to the real agents in the same run.

    .venv/bin/python bench/skeleton.py [--changes 300] [--no-agents] [--essentials
                                        [--essentials-without write,fsync,commit]] [--json FILE]

The skeleton is two processes on the agents' own stack (anyio on uvloop, uvicorn with
httptools, the agent's Kafka producer and ``read_batches`` consumer) with nothing of the
agent between the sockets:
- the exporting one answers ``PUT /v1/agent/service/register`` by handing the body, as it
  came, to the producer (no validation, store, exported view, feed, encryption) and
  answering 200 without waiting for an fsync or the broker;
- the importing one follows the topic and answers ``GET /v1/health/service/<name>`` (with
  ``index`` and ``wait``, as a blocking query) from a dict of the latest bodies.

Same broker, topic settings, record path and watcher (bench/latency.py) as the propagation
figure, with the floor, a change through the skeleton and a change through the agents
interleaved after the same warm-up. So the figures split the ratio to the floor in two: what
any design with two Python processes and HTTP on both ends pays (skeleton / floor), and what
the agents' own work adds (agents / skeleton). Nothing is asserted.

With ``--essentials``, a third pair between the two (bench/essentials.py): the skeleton plus
only the work the design cannot do without (validation, the store's durable write with its
exported view and feed, sealing, the fsync before the answer; the importer's fold and
commit), done with the agent's own code and none of its framework.

Each process's CPU per sample is reported too (schedstat, all threads, less what the process
runs idle over a quiet spell before the samples): on two cores, the work each side adds is
what the others wait for.

One more leg, interleaved too: the floor across two processes (bench/latency.py). The
issue's floor produces and consumes in one process, which is awake from the produce to the
consume; a change's path hands the record from one process to another that slept since the
last change, as any two clusters must. The receiver process of that floor is a role of this
script too (``start_receiver``), and bench/suite.py starts one as well.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import essentials  # bench/ is on sys.path when a script here runs
import latency
import msgspec
import uvicorn
from agents import Agent, establish, export, wait_until_serving
from plain_asgi import (
    JSON,
    ChangeIndex,
    Receive,
    Scope,
    Send,
    answer,
    answer_other,
    health_query,
    read_body,
)

from agent import kafka_client, topics
from agent.devbroker import DevBroker, free_port
from agent.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
TOPIC = "bench-skeleton"
# The importer's idle fetch wait at the benchmark's 1 s heartbeat (importer.idle_fetch_wait).
IDLE_FETCH_WAIT = 0.5
IDLE_SPELL = 5.0  # seconds of no change, to measure each process's idle CPU


class ExporterApp:
    """PUT register -> the body straight to the producer; answered once it is queued."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    @staticmethod
    def _failed(future: Any) -> None:
        # Not answered as a failure (the answer went first): said in the process's log.
        if future.exception() is not None:
            print(f"skeleton exporter: produce failed: {future.exception()}", file=sys.stderr)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT" and scope["path"] == "/v1/agent/service/register":
            body = await read_body(receive)
            key = msgspec.json.decode(body)["ID"].encode()
            # aiokafka's send queues the record and returns the future of its acknowledgement;
            # the sender task puts it on the socket on the loop's next turn.
            sent = await self.producer.send(TOPIC, value=body, key=key)
            sent.add_done_callback(self._failed)
            await answer(send, 200, b"true", [JSON])
        else:
            await answer_other(scope, send)


class ImporterApp:
    """Follows the topic; GET health answers from the latest bodies, blocking on ``index``."""

    def __init__(self) -> None:
        self.latest: dict[bytes, Any] = {}
        self.index = ChangeIndex()

    async def follow(self, bootstrap: str) -> None:
        batches = kafka_client.read_batches(
            bootstrap, TOPIC, stop_at_end=False, poll_interval=IDLE_FETCH_WAIT
        )
        async for batch in batches:
            if not batch.records:
                continue
            for record in batch.records:
                if record.key is not None and record.value is not None:
                    self.latest[record.key] = msgspec.json.decode(record.value)
            self.index.bump()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = await health_query(scope, self.index)
        if name is None:
            await answer_other(scope, send)
            return
        entries = [{"Service": body} for body in self.latest.values() if body["Name"] == name]
        await answer(send, 200, msgspec.json.encode(entries), [JSON, self.index.header()])


class ReceiverApp:
    """The receiver of the floor across two processes: follows its topic and notes when each
    record arrived; ``GET /arrived/<value in hex>`` answers that moment
    (``time.perf_counter``), waiting for it if need be."""

    def __init__(self) -> None:
        self.arrivals: dict[bytes, float] = {}
        self.arrived = anyio.Event()

    async def follow(self, bootstrap: str) -> None:
        batches = kafka_client.read_batches(
            bootstrap, latency.HANDOFF_TOPIC, stop_at_end=False, poll_interval=IDLE_FETCH_WAIT
        )
        async for batch in batches:
            now = time.perf_counter()  # first: what follows is off the clock
            for record in batch.records:
                if record.value is not None:
                    self.arrivals[record.value] = now
            self.arrived.set()
            self.arrived = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/arrived/"):
            value = bytes.fromhex(scope["path"].rsplit("/", 1)[1])
            with anyio.move_on_after(10):
                while value not in self.arrivals:
                    await self.arrived.wait()
            if value not in self.arrivals:
                await answer(send, 404, b"", [])
                return
            body = msgspec.json.encode(self.arrivals.pop(value))
            await answer(send, 200, body, [JSON, (b"x-consul-index", b"0")])
        else:
            await answer_other(scope, send)


async def _serve(app: Any, port: int) -> None:
    # As the agent binds (runtime._bind): IPPROTO_TCP, so asyncio sets TCP_NODELAY.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app, log_config=None, access_log=False, proxy_headers=False, server_header=False,
        lifespan="off",
    )  # fmt: skip
    await uvicorn.Server(config).serve(sockets=[sock])


async def _run_role(role: str, bootstrap: str, port: int, without: frozenset[str]) -> None:
    if role.startswith("essentials-"):
        serve = partial(_serve, port=port)
        await essentials.run_role(role, bootstrap, serve, latency.SERVICE, IDLE_FETCH_WAIT, without)
        return
    async with AsyncExitStack() as stack:
        if role == "exporter":
            producer = await stack.enter_async_context(kafka_client.producer(bootstrap))
            await _serve(ExporterApp(producer), port)
        else:
            app = ImporterApp() if role == "importer" else ReceiverApp()
            async with anyio.create_task_group() as group:
                group.start_soon(app.follow, bootstrap)
                await _serve(app, port)
                group.cancel_scope.cancel()


class Skeleton:
    """One bare process of this benchmark on its own port: a skeleton ``role`` (exporter,
    importer, receiver) or an essentials one (bench/essentials.py, without the pieces in
    ``without``)."""

    def __init__(
        self, role: str, bootstrap: str, log: Path, without: frozenset[str] = frozenset()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, __file__, "--role", role, "--kafka", bootstrap,
                "--port", str(self.port), "--essentials-without", ",".join(without)]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO, env=os.environ
        )
        wait_until_serving(self.url, f"skeleton {role}")

    def stop(self) -> None:
        stop_process(self.process, 10)


async def _create_stream_topic(bootstrap: str, topic: str) -> None:
    """A topic with the stream's settings, as every path here uses."""
    await kafka_client.create_topic(
        bootstrap, topic, compacted=True, configs=dict(topics.STREAM_CONFIG)
    )


def start_essentials(
    bootstrap: str, log: Path, without: frozenset[str] = frozenset()
) -> tuple[Skeleton, Skeleton]:
    """The essentials pair (bench/essentials.py), its topic created first: (exporting,
    importing)."""
    anyio.run(_create_stream_topic, bootstrap, essentials.TOPIC)
    exporting = Skeleton("essentials-exporter", bootstrap, log, without)
    try:
        return exporting, Skeleton("essentials-importer", bootstrap, log, without)
    except BaseException:
        exporting.stop()
        raise


def start_receiver(bootstrap: str, log: Path) -> Skeleton:
    """The receiver process of the floor across two processes, its topic created first."""
    anyio.run(_create_stream_topic, bootstrap, latency.HANDOFF_TOPIC)
    return Skeleton("receiver", bootstrap, log)


async def _measure(
    bootstrap: str,
    receiver_url: str,
    paths: dict[str, tuple[str, latency.Target]],
    samples: int,
    warm_floor: int,
    warm_changes: int,
    pids: dict[str, int],
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Warm-up, then per sample: a floor round trip, the floor across two processes, then
    one change through each path. Also the CPU each process in ``pids`` used per sample."""
    pause = latency.pause_for(1)
    out: dict[str, list[float]] = {
        "floor": [], "floor_two_processes": [], **{name: [] for name in paths}
    }  # fmt: skip
    async with (
        latency.Floor(bootstrap) as floor,
        latency.TwoProcessFloor(bootstrap, receiver_url) as two_processes,
        latency.open_client("lean") as client,
    ):
        for _ in range(warm_floor):
            await floor.round_trip()
        for _ in range(warm_changes):
            await two_processes.hand_over(client)
            for exporter, target in paths.values():
                await latency.watched_change(client, exporter, [target], pause)
        # What each process runs with no change at all (heartbeats, idle fetches, tickers),
        # over a quiet spell, so the CPU per sample can be told apart from it.
        idle_before = {name: latency.cpu_ns(pid) for name, pid in pids.items()}
        await anyio.sleep(IDLE_SPELL)
        idle_ns_per_s = {
            name: (latency.cpu_ns(pid) - idle_before[name]) / IDLE_SPELL
            for name, pid in pids.items()
        }
        cpu_before = {name: latency.cpu_ns(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        for _ in range(samples):
            await anyio.sleep(pause)
            out["floor"].append(await floor.round_trip())
            await anyio.sleep(pause)
            out["floor_two_processes"].append(await two_processes.hand_over(client))
            for name, (exporter, target) in paths.items():
                change = await latency.watched_change(client, exporter, [target], pause)
                out[name] += change.visible
        seconds = time.perf_counter() - started
        cpu = {
            name: round(
                (latency.cpu_ns(pid) - cpu_before[name] - idle_ns_per_s[name] * seconds)
                / samples
                / 1e6,
                3,
            )
            for name, pid in pids.items()
        }
    return out, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=300, help="measured changes per path")
    parser.add_argument("--warm-floor", type=int, default=latency.WARM_FLOOR)
    parser.add_argument("--warm-changes", type=int, default=latency.WARM_CHANGES)
    parser.add_argument("--no-agents", action="store_true", help="the skeleton alone")
    parser.add_argument(
        "--essentials", action="store_true",
        help="also the agent's essential work without its framework (bench/essentials.py)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--essentials-without", default="",
        help=f"leave pieces of the essential work out (comma-separated: {essentials.LEAVE_OUT})",
    )  # fmt: skip
    roles = ["exporter", "importer", "receiver", "essentials-exporter", "essentials-importer"]
    parser.add_argument("--role", choices=roles, help=argparse.SUPPRESS)
    parser.add_argument("--kafka", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    without = frozenset(filter(None, args.essentials_without.split(",")))
    if not without <= set(essentials.LEAVE_OUT):
        parser.error(f"--essentials-without: expected some of {essentials.LEAVE_OUT}")
    if args.role:
        anyio.run(
            _run_role, args.role, args.kafka, args.port, without,
            backend_options={"use_uvloop": True},
        )  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = DevBroker(work / "broker")
        broker.start()
        broker.wait_ready()
        running: list[Skeleton | Agent] = []
        try:
            anyio.run(_create_stream_topic, broker.bootstrap, TOPIC)
            exporter = Skeleton("exporter", broker.bootstrap, work / "skeleton-exporter.log")
            running.append(exporter)
            importer = Skeleton("importer", broker.bootstrap, work / "skeleton-importer.log")
            running.append(importer)
            receiver = start_receiver(broker.bootstrap, work / "skeleton-receiver.log")
            running.append(receiver)
            paths = {"skeleton": (exporter.url, (importer.url, "east"))}
            if args.essentials:
                pair = start_essentials(broker.bootstrap, work / "essentials.log", without)
                running += pair
                paths["essentials"] = (pair[0].url, (pair[1].url, "east"))
            assert broker.pid is not None
            pids = {
                "broker": broker.pid,
                "skeleton exporter": exporter.process.pid,
                "skeleton importer": importer.process.pid,
                "receiver": receiver.process.pid,
            }
            if args.essentials:
                pids["essentials exporter"] = pair[0].process.pid
                pids["essentials importer"] = pair[1].process.pid
            if not args.no_agents:
                east = Agent("east", broker.bootstrap, work)
                running.append(east)
                west = Agent("west", broker.bootstrap, work)
                running.append(west)
                establish(east, west)
                export(east, latency.SERVICE, ["west"])
                paths["agents"] = (east.url, (west.url, "east"))
                pids.update(east=east.process.pid, west=west.process.pid)
            samples, cpu = anyio.run(
                _measure, broker.bootstrap, receiver.url, paths, args.changes, args.warm_floor,
                args.warm_changes, pids,
            )  # fmt: skip
        finally:
            for process in running:
                process.stop()
            broker.stop()
    floor = latency.summary(samples["floor"])
    report: dict[str, Any] = {"floor": floor}
    for name in ["floor_two_processes", *paths]:
        figures = latency.summary(samples[name])
        report[name] = {
            **figures,
            "ratio_p50_to_floor": round(figures["p50_ms"] / floor["p50_ms"], 2),
        }
    # What each process ran per sample (one change through each path and the floors) beyond
    # what it runs idle: on two cores, the agents' extra CPU is what the others wait for.
    report["cpu_ms_per_sample"] = cpu
    report["method"] = {
        "changes": args.changes,
        "warm_floor": args.warm_floor,
        "warm_changes": args.warm_changes,
        "pause_s": latency.pause_for(1),
        "client": "lean",
        "essentials_without": sorted(without),
    }
    print(json.dumps(report, indent=2))
    print(f"floor p50 {floor['p50_ms']} ms p99 {floor['p99_ms']} ms")
    for name in ["floor_two_processes", *paths]:
        row = report[name]
        ratio = row["ratio_p50_to_floor"]
        print(f"{name}: p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms, {ratio}x floor")
    print("CPU per sample: " + ", ".join(f"{name} {ms} ms" for name, ms in cpu.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
