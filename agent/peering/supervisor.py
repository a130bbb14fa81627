"""Starts and stops the loops of every peering, level-triggered from the peering states.

One task group owns everything: the acceptor's bootstrap loop and, per peering, a runner
in its own cancel scope — streams (exporter, importer, liveness ticker) while the peering is
ACTIVE or FAILING, the deleter while it is DELETING. After every change of any peering the
supervisor compares what runs with what should run; a runner that should stop is cancelled
and awaited before its successor starts, so the exporter and the deleter never race on the
same publisher cursor. A runner that fails with a bug takes the agent down (never half alive).
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import anyio
import anyio.abc

from agent import kafka_client, metrics, topics
from agent.kafka_client import KafkaSettings
from agent.notifier import on_loop
from agent.peering.context import PeeringContext, kafka_label, retry_forever
from agent.peering.exporter import Exporter, run_exporter
from agent.peering.handshake_io import serve_bootstrap
from agent.peering.importer import run_importer
from agent.peering.records import STREAMING, PeeringRecord
from agent.peering_state import Action, PeeringState, Tick, TopicsRemoved
from agent.wire.keys import Direction

log = logging.getLogger("agent.peering")


class RunnerKind(enum.Enum):
    STREAMS = "streams"
    DELETER = "deleter"


def desired_runner(record: PeeringRecord) -> RunnerKind | None:
    if record.state in STREAMING:
        return RunnerKind.STREAMS
    if record.state is PeeringState.DELETING:
        return RunnerKind.DELETER
    return None


@dataclasses.dataclass
class _Runner:
    kind: RunnerKind
    scope: anyio.CancelScope
    done: anyio.Event


async def _tick_forever(ctx: PeeringContext, name: str) -> None:
    """Feed the clock to the state machine: FAILING after 3 silent heartbeat intervals."""
    period = min(1.0, ctx.heartbeat_interval / 2)
    while True:
        await anyio.sleep(period)
        for action in ctx.tracker.feed(name, Tick(ctx.clock())):
            if action is Action.REMOVE_STREAM_TOPICS:
                return


async def _watch_kafkas(ctx: PeeringContext) -> None:
    """Probe every Kafka cluster a streaming peering uses every 3 heartbeat intervals (at
    least 1 s) for the ``peering_kafka_connected`` gauge: aiokafka's clients retry an
    unreachable broker inside ``getmany``/``send`` without raising, so the loops alone never
    notice an outage. Once per cluster, not per peering: a probe opens a connection and
    reads the cluster's metadata, and with 50 peerings on one cluster the probes were most
    of an idle agent's CPU."""
    period = max(1.0, 3 * ctx.heartbeat_interval)
    while True:
        await anyio.sleep(period)
        clusters = {
            kafka_label(r.Kafka): r.Kafka
            for r in ctx.tracker.all()
            if desired_runner(r) is RunnerKind.STREAMS
        }
        async with anyio.create_task_group() as probes:  # an unreachable one delays no other
            for label, kafka in clusters.items():
                probes.start_soon(_probe, label, kafka, min(period, 5.0))


async def _probe(label: str, kafka: KafkaSettings, request_timeout: float) -> None:
    info = await kafka_client.probe(kafka, request_timeout=request_timeout)
    metrics.set_kafka_connected(label, info is not None)


async def run_streams(ctx: PeeringContext, name: str) -> None:
    record = ctx.tracker.get(name)
    if record is None:
        return
    async with anyio.create_task_group() as group:
        group.start_soon(
            retry_forever, f"exporter {name}", record.Kafka, lambda: run_exporter(ctx, name)
        )
        group.start_soon(
            retry_forever, f"importer {name}", record.Kafka, lambda: run_importer(ctx, name)
        )
        group.start_soon(_tick_forever, ctx, name)


async def run_deleter(ctx: PeeringContext, name: str) -> None:
    """Tell the peer (Terminated), wait out the grace, remove the stream topics, forget."""
    record = ctx.tracker.get(name)
    if record is None:
        return
    status = record.Status
    if status.HadStreams and record.ExportKeyring is not None:

        async def tell_peer() -> None:
            async with kafka_client.producer(record.Kafka) as producer:
                await Exporter(ctx, record, producer).terminate("deleted by the peer")

        with anyio.move_on_after(max(status.DeleteGrace, 1.0)):
            await retry_forever(f"terminate {name}", record.Kafka, tell_peer)
    remaining = status.DeleteRequestedAt + status.DeleteGrace - ctx.clock()
    await anyio.sleep(max(0.0, remaining))

    async def remove_topics() -> None:
        for direction in Direction:
            await kafka_client.delete_topic(record.Kafka, topics.stream_topic(record.ID, direction))

    if status.HadStreams:
        with anyio.move_on_after(30):
            await retry_forever(f"remove topics {name}", record.Kafka, remove_topics)
    actions = ctx.tracker.feed(name, TopicsRemoved(ctx.clock()))
    if Action.FORGET_PEERING in actions:
        ctx.tracker.forget(name)


async def supervise(
    ctx: PeeringContext, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    runners: dict[str, _Runner] = {}

    def wake_exporters(peers: frozenset[str]) -> None:
        for peer in peers:
            ctx.signals_for(peer).woken.set()

    # Exporters sleep until their own peer's feed grows: waking all of them on every catalog
    # change (imports, heartbeats, other peers' exports) cost each one a feed read.
    ctx.store.set_on_feed(on_loop(wake_exporters))
    try:
        await _supervise(ctx, runners, task_status)
    finally:
        ctx.store.set_on_feed(None)


async def _supervise(
    ctx: PeeringContext, runners: dict[str, _Runner], task_status: anyio.abc.TaskStatus[None]
) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(
            retry_forever,
            "bootstrap topic",
            ctx.home_kafka,
            lambda: serve_bootstrap(
                ctx.tracker, ctx.store, local_cluster=ctx.local_cluster, kafka=ctx.home_kafka
            ),
        )
        group.start_soon(_watch_kafkas, ctx)
        task_status.started()
        while True:
            version = ctx.tracker.version
            desired = {r.Name: desired_runner(r) for r in ctx.tracker.all()}
            for name, runner in list(runners.items()):
                if desired.get(name) is not runner.kind:
                    runner.scope.cancel()
                    await runner.done.wait()
                    del runners[name]
            for name, kind in desired.items():
                if kind is not None and name not in runners:
                    runners[name] = _start(group, ctx, name, kind)
            await ctx.tracker.wait_changed(version)


def _start(group: anyio.abc.TaskGroup, ctx: PeeringContext, name: str, kind: RunnerKind) -> _Runner:
    runner = _Runner(kind=kind, scope=anyio.CancelScope(), done=anyio.Event())

    async def run() -> None:
        try:
            with runner.scope:
                if kind is RunnerKind.STREAMS:
                    await run_streams(ctx, name)
                else:
                    await run_deleter(ctx, name)
        finally:
            runner.done.set()

    group.start_soon(run, name=f"peering {name} {kind.value}")
    return runner
