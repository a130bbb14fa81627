"""Floor and propagation latency, measured side by side; shared by propagation.py and suite.py.

- floor: bare aiokafka through ``agent.kafka_client`` (the idempotent acks=all producer, a
  ``read_batches`` consumer on the same broker): one record produced until the consumer has
  it. The topic is compacted with the stream's own settings (``agent.topics.STREAM_CONFIG``)
  and the record is the size of a stream record (32-byte key, ~330-byte encrypted value), so
  the floor runs with the same broker settings as the peering stream. The producer and the
  consumer stay open for the whole run.
- propagation, as a watcher sees it: for each change, first a blocking query is open on every
  target (``GET /v1/health/service/bench?peer=P&index=N&wait=10s``, N from a non-blocking GET
  just before), then — after a short pause, so the queries have reached the servers — the
  clock starts and ``PUT /v1/agent/service/register`` goes to the exporting agent; a sample is
  the time until a target's blocking query returns a body where the instance has the new port
  (the query is re-issued with the new X-Consul-Index if it returned without it).
- polling (optional): the same change, seen by a client that re-reads
  ``/v1/health/service/bench?peer=P`` without ``index`` back to back until the port shows.
- floor across two processes (optional, ``receiver``): the floor's record handed to another
  process that slept since the last one, as a change between two clusters always is; that
  process (bench/skeleton.py's receiver role: a ``read_batches`` consumer and nothing else)
  notes the record's arrival on the machine's monotonic clock, which all processes share,
  and the benchmark asks for that moment afterwards, off the clock. It does not wait for
  the producer's acknowledgement, which the one-process floor does (with acks=all on one
  broker it comes with the fetch answer).

Conditions are the same for both figures: a warm-up (unmeasured floor round trips, then
unmeasured changes) until the broker's JIT and both agents are in a steady state, then for
each sample one floor round trip and one change, each after the same pause.

The client (``client_kind``): by default ``lean`` (bench/lean_http.py: each request is bytes
prepared before the clock, written to a kept-alive connection, the answer parsed by
httptools), so the figure measures the agents and not the instrument; ``aiohttp`` shows what a
Python watcher sees (from the call to the request on the socket ~0.3 ms, parsing the answer
~0.17 ms, both right after its process slept). httpx was dropped earlier for the same reason
(GET /v1/status/leader: httpx ~0.97 ms, aiohttp ~0.23 ms, a raw socket ~0.15 ms). Nothing
here asserts a timing.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import aiohttp
import anyio
import msgspec
import yarl
from lean_http import LeanHttp, Prepared, prepare

from agent import kafka_client, topics
from agent.kafka_client import Batch

# (base URL of the agent that imports, the name under which it knows the exporting peer)
Target = tuple[str, str]

SERVICE = "bench"
# The topic of the floor across two processes (the receiver process follows it).
HANDOFF_TOPIC = "bench-handoff"
FLOOR_KEY_BYTES = 32
FLOOR_VALUE_BYTES = 330
# Long enough for a steady state: after 200 round trips and 30 changes (the warm-up up to
# session 5) the floor kept falling for thousands more (p50 1.94 ms, 1.65 ms after 3,000,
# 1.32 ms after 10,000), faster than propagation, so the ratio came out flattering.
WARM_FLOOR = 10_000
WARM_CHANGES = 1_000
PAUSE = 0.02
PAUSE_PER_TARGET = 0.001

# Every change gets a port no earlier change of this process had, so a watcher never
# mistakes an old value for the new one (and a fan-out round never starts on the port the
# previous round ended with).
_ports = itertools.cycle(range(10_000, 60_000))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50/p99/max in milliseconds (values in seconds)."""
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def pause_for(targets: int) -> float:
    """The pause before each sample: time for ``targets`` blocking queries to reach servers."""
    return PAUSE + PAUSE_PER_TARGET * targets


class Floor:
    """Produce one record, wait until the consumer has it; producer and consumer stay open."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"bench-floor-{os.getpid()}-{time.time_ns()}"
        self.key = os.urandom(FLOOR_KEY_BYTES)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Floor:
        await kafka_client.create_topic(
            self.bootstrap, self.topic, compacted=True, configs=dict(topics.STREAM_CONFIG)
        )
        async with AsyncExitStack() as stack:
            self._producer = await stack.enter_async_context(kafka_client.producer(self.bootstrap))
            batches = cast(
                AsyncGenerator[Batch, None],
                kafka_client.read_batches(
                    self.bootstrap, self.topic, stop_at_end=False, poll_interval=0.5
                ),
            )
            stack.push_async_callback(batches.aclose)
            self._batches = batches
            await self.round_trip()  # the consumer is assigned and has fetched once
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def round_trip(self) -> float:
        value = os.urandom(FLOOR_VALUE_BYTES)
        started = time.perf_counter()
        await kafka_client.send(self._producer, self.topic, self.key, value)
        while not any(record.value == value for record in (await anext(self._batches)).records):
            pass
        return time.perf_counter() - started


class TwoProcessFloor:
    """The floor's record from this process to the receiver process at ``receiver_url``."""

    def __init__(self, bootstrap: str, receiver_url: str) -> None:
        self.bootstrap = bootstrap
        self.receiver_url = receiver_url
        self.key = os.urandom(FLOOR_KEY_BYTES)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> TwoProcessFloor:
        self._producer = await self._stack.enter_async_context(
            kafka_client.producer(self.bootstrap)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def hand_over(self, client: Client) -> float:
        """Seconds from the produce to the receiver having the record."""
        value = os.urandom(FLOOR_VALUE_BYTES)
        started = time.perf_counter()
        await kafka_client.send(self._producer, HANDOFF_TOPIC, self.key, value)
        arrived, _index = await client.get_json(f"{self.receiver_url}/arrived/{value.hex()}")
        return float(arrived) - started


def cpu_ns(pid: int) -> int:
    """Nanoseconds the live threads of a process have run on a CPU so far (schedstat: precise
    where ``cpu_seconds`` counts 10 ms ticks, but a thread that has ended no longer counts,
    where ``cpu_seconds`` keeps it: for short spells, not for a whole run)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_change(
    exporter: str,
    targets: Sequence[Target],
    changes: int,
    pids: dict[str, int],
    client_kind: ClientKind = "lean",
) -> dict[str, float]:
    """Milliseconds of CPU each process spends per watched change: everything it used
    during ``changes`` changes (with their pauses, so idle work such as heartbeats is in)
    divided by ``changes``. On a shared 2-core machine this is what competes for the cores."""
    pause = pause_for(len(targets))
    async with open_client(client_kind) as client:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for _ in range(changes):
            await watched_change(client, exporter, targets, pause)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return {name: round(1000 * (after[name] - before[name]) / changes, 2) for name in pids}


ClientKind = Literal["lean", "aiohttp"]
REQUEST_TIMEOUT = 30.0  # a blocking query answers within its 10 s wait


class Client(Protocol):
    """The two requests of a change's path, as the benchmark makes them."""

    def prepare_put(self, url: str, body: bytes) -> Any:
        """Everything about the PUT that can be done before the clock starts."""

    async def put(self, prepared: Any) -> None:
        """Send a prepared PUT; raises unless it is answered 200."""

    async def get_json(self, url: str) -> tuple[Any, str]:
        """GET ``url``: its decoded JSON body and its X-Consul-Index."""


class LeanClient:
    """bench/lean_http.py: prepared bytes on kept-alive connections, httptools to parse."""

    def __init__(self) -> None:
        self.http = LeanHttp()

    def prepare_put(self, url: str, body: bytes) -> Prepared:
        return prepare("PUT", url, body)

    async def put(self, prepared: Prepared) -> None:
        with anyio.fail_after(REQUEST_TIMEOUT):
            answer = await self.http.send(prepared)
        if answer.status != 200:
            raise RuntimeError(f"PUT answered {answer.status}: {answer.body[:200]!r}")

    async def get_json(self, url: str) -> tuple[Any, str]:
        with anyio.fail_after(REQUEST_TIMEOUT):
            answer = await self.http.send(prepare("GET", url))
        if answer.status != 200:
            raise RuntimeError(f"GET {url} answered {answer.status}: {answer.body[:200]!r}")
        return msgspec.json.decode(answer.body), answer.headers["x-consul-index"]


class AiohttpClient:
    """aiohttp as a Python watcher would use it, without avoidable work per request (the URL
    parsed and the body encoded before the clock; msgspec to decode)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def prepare_put(self, url: str, body: bytes) -> tuple[yarl.URL, bytes]:
        return yarl.URL(url), body

    async def put(self, prepared: tuple[yarl.URL, bytes]) -> None:
        url, body = prepared
        async with self.session.put(url, data=body, headers=_JSON) as answer:
            answer.raise_for_status()
            await answer.read()

    async def get_json(self, url: str) -> tuple[Any, str]:
        async with self.session.get(yarl.URL(url)) as answer:
            answer.raise_for_status()
            return msgspec.json.decode(await answer.read()), answer.headers["X-Consul-Index"]


_JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def open_client(kind: ClientKind) -> AsyncIterator[Client]:
    """One client per run: kept-alive connections, every watcher its own."""
    if kind == "lean":
        lean = LeanClient()
        try:
            yield lean
        finally:
            await lean.http.aclose()
        return
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )
    async with session:
        yield AiohttpClient(session)


def _health_url(target: Target) -> str:
    url, peer = target
    return f"{url}/v1/health/service/{SERVICE}?peer={peer}"


def _has_port(entries: list[dict[str, Any]], port: int) -> bool:
    return any(entry["Service"]["Port"] == port for entry in entries)


def _registration(client: Client, exporter: str, port: int) -> Any:
    body = {"ID": f"{SERVICE}-1", "Name": SERVICE, "Address": "10.1.1.1", "Port": port}
    url = f"{exporter}/v1/agent/service/register"
    return client.prepare_put(url, msgspec.json.encode(body))


@dataclass
class Change:
    """One change: seconds from the register PUT to each target seeing it, and the PUT's own."""

    visible: list[float]
    register: float


async def watched_change(
    client: Client, exporter: str, targets: Sequence[Target], pause: float
) -> Change:
    """Blocking queries open on every target first, then the register on the exporter."""
    port = next(_ports)
    indexes = [(await client.get_json(_health_url(target)))[1] for target in targets]
    seen = [float("nan")] * len(targets)

    async def watch(k: int, index: str) -> None:
        base = _health_url(targets[k])
        while True:
            entries, index = await client.get_json(f"{base}&index={index}&wait=10s")
            if _has_port(entries, port):
                seen[k] = time.perf_counter()
                return

    prepared = _registration(client, exporter, port)
    async with anyio.create_task_group() as group:
        for k, index in enumerate(indexes):
            group.start_soon(watch, k, index)
        await anyio.sleep(pause)
        started = time.perf_counter()
        await client.put(prepared)
        registered = time.perf_counter() - started
    return Change([t - started for t in seen], registered)


async def polled_change(client: Client, exporter: str, targets: Sequence[Target]) -> list[float]:
    """The register on the exporter, then each target re-read without ``index`` until it shows."""
    port = next(_ports)
    seen = [float("nan")] * len(targets)

    async def poll(k: int) -> None:
        url = _health_url(targets[k])
        while True:
            entries, _index = await client.get_json(url)
            if _has_port(entries, port):
                seen[k] = time.perf_counter()
                return

    prepared = _registration(client, exporter, port)
    started = time.perf_counter()
    await client.put(prepared)
    async with anyio.create_task_group() as group:
        for k in range(len(targets)):
            group.start_soon(poll, k)
    return [t - started for t in seen]


@dataclass
class Samples:
    """Seconds. ``propagation`` has one sample per (change, target)."""

    floor: list[float] = field(default_factory=list)
    floor_two_processes: list[float] = field(default_factory=list)
    propagation: list[float] = field(default_factory=list)
    register: list[float] = field(default_factory=list)
    polling: list[float] = field(default_factory=list)
    # The same changes seen through a second client, interleaved (``measure(compare=...)``).
    compared_client: str = ""
    compared: list[float] = field(default_factory=list)
    # Changes through the essentials pair (bench/essentials.py), interleaved.
    essentials: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The figures under the report keys (``ratio_p50_to_floor`` when there is a floor)."""
        out: dict[str, Any] = {
            "propagation": summary(self.propagation),
            "register": summary(self.register),
        }
        if self.floor:
            out["floor"] = summary(self.floor)
            out["ratio_p50_to_floor"] = round(
                out["propagation"]["p50_ms"] / out["floor"]["p50_ms"], 2
            )
        if self.floor_two_processes:
            out["floor_two_processes"] = summary(self.floor_two_processes)
            out["ratio_p50_to_floor_two_processes"] = round(
                out["propagation"]["p50_ms"] / out["floor_two_processes"]["p50_ms"], 2
            )
        if self.polling:
            out["propagation_polling"] = summary(self.polling)
        if self.compared:
            other: dict[str, Any] = {
                "client": self.compared_client,
                "propagation": summary(self.compared),
            }
            if self.floor:
                other["ratio_p50_to_floor"] = round(
                    other["propagation"]["p50_ms"] / out["floor"]["p50_ms"], 2
                )
            out["compared"] = other
        if self.essentials:
            essentials = summary(self.essentials)
            if self.floor:
                essentials["ratio_p50_to_floor"] = round(
                    essentials["p50_ms"] / out["floor"]["p50_ms"], 2
                )
            out["essentials"] = essentials
        return out


async def measure(
    bootstrap: str | None,
    exporter: str,
    targets: Sequence[Target],
    samples: int,
    *,
    warm_floor: int = WARM_FLOOR,
    warm_changes: int = WARM_CHANGES,
    polling: int = 0,
    client_kind: ClientKind = "lean",
    compare: ClientKind | None = None,
    receiver: str | None = None,
    essentials: tuple[str, Target] | None = None,
) -> Samples:
    """Warm up, then ``samples`` times: pause, floor round trip; pause, watched change.

    Without ``bootstrap`` no floor is measured. With ``compare``, each sample also has a
    change watched through that client, right after, against the same floor samples (the
    floor moves with the machine's state over a run, so separate rounds do not compare).
    With ``receiver`` (the URL of a receiver process, see bench/skeleton.py), each sample
    also has the floor across two processes, after its own pause. With ``essentials`` (the
    exporting URL and target of the pair in bench/essentials.py), each sample also has a
    change through that pair. ``polling`` changes (seen by polling clients) follow the
    interleaved ones.
    """
    pause = pause_for(len(targets))
    out = Samples(compared_client=compare or "")
    async with AsyncExitStack() as stack:
        floor = await stack.enter_async_context(Floor(bootstrap)) if bootstrap else None
        client = await stack.enter_async_context(open_client(client_kind))
        other = await stack.enter_async_context(open_client(compare)) if compare else None
        handoff = None
        if bootstrap and receiver:
            handoff = await stack.enter_async_context(TwoProcessFloor(bootstrap, receiver))
        if floor is not None:
            for _ in range(warm_floor):
                await floor.round_trip()
        for _ in range(warm_changes):
            if handoff is not None:
                await handoff.hand_over(client)
            await watched_change(client, exporter, targets, pause)
            if other is not None:
                await watched_change(other, exporter, targets, pause)
            if essentials is not None:
                await watched_change(client, essentials[0], [essentials[1]], pause)
        for _ in range(samples):
            if floor is not None:
                await anyio.sleep(pause)
                out.floor.append(await floor.round_trip())
            if handoff is not None:
                await anyio.sleep(pause)
                out.floor_two_processes.append(await handoff.hand_over(client))
            change = await watched_change(client, exporter, targets, pause)
            out.propagation += change.visible
            out.register.append(change.register)
            if other is not None:
                out.compared += (await watched_change(other, exporter, targets, pause)).visible
            if essentials is not None:
                alone = await watched_change(client, essentials[0], [essentials[1]], pause)
                out.essentials += alone.visible
        for _ in range(polling):
            await anyio.sleep(pause)
            out.polling += await polled_change(client, exporter, targets)
    return out
