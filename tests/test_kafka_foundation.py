"""The foundation on a real Apache Kafka: the client seam, compaction config, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from agent import kafka_client
from agent.devbroker import DevBroker
from tests.kafka_fixtures import BrokerFactory


async def _read_all(bootstrap: str, topic: str) -> list[kafka_client.Record]:
    return [record async for record in kafka_client.read_partition(bootstrap, topic)]


def test_produce_consume_round_trip(kafka: DevBroker, topic_name: Callable[[str], str]) -> None:
    """A record produced with aiokafka is read back with its key, value and offset."""
    topic = topic_name("rt")

    async def scenario() -> list[kafka_client.Record]:
        assert await kafka_client.create_topic(kafka.bootstrap, topic, compacted=False)
        async with kafka_client.producer(kafka.bootstrap) as producer:
            offsets = [
                await kafka_client.send(producer, topic, f"k{i}".encode(), f"v{i}".encode())
                for i in range(3)
            ]
        assert offsets == [0, 1, 2]
        return await _read_all(kafka.bootstrap, topic)

    records = anyio.run(scenario)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (0, b"k0", b"v0"),
        (1, b"k1", b"v1"),
        (2, b"k2", b"v2"),
    ]


def test_send_batch_spans_several_record_batches_in_order(
    kafka: DevBroker, topic_name: Callable[[str], str]
) -> None:
    """A burst larger than one record batch (MAX_BATCH_BYTES) is split into several; every
    record gets its own offset, in order, and reads back unchanged. A one-record batch after
    it continues the offsets; an empty one sends nothing."""
    topic = topic_name("burst")
    value = os.urandom(300)
    count = 3 * kafka_client.MAX_BATCH_BYTES // len(value)
    records: list[tuple[bytes | None, bytes]] = [
        (f"k{i}".encode(), value + i.to_bytes(4, "big")) for i in range(count)
    ]

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        assert await kafka_client.create_topic(kafka.bootstrap, topic, compacted=False)
        async with kafka_client.producer(kafka.bootstrap) as producer:
            burst = await kafka_client.send_batch(producer, topic, records)
            single = await kafka_client.send_batch(producer, topic, [(None, b"last")])
            empty = await kafka_client.send_batch(producer, topic, [])
        return burst, single, empty

    burst, single, empty = anyio.run(scenario)
    assert burst == list(range(count))
    assert single == [count]
    assert empty == []
    read = anyio.run(_read_all, kafka.bootstrap, topic)
    assert [(r.key, r.value) for r in read] == [*records, (None, b"last")]


def test_a_long_idle_fetch_answers_as_soon_as_a_record_lands(
    kafka: DevBroker, topic_name: Callable[[str], str]
) -> None:
    """A follower waiting in a long idle fetch (an importer's, half a heartbeat) gets a record
    produced meanwhile in its next batch, not an empty batch when the wait ends first: the
    wait sets only how often an idle stream is polled, never how late a change arrives."""
    topic = topic_name("idle")
    wait = 10.0

    async def scenario() -> list[tuple[int, list[bytes]]]:
        assert await kafka_client.create_topic(kafka.bootstrap, topic, compacted=False)
        batches: list[tuple[int, list[bytes]]] = []
        async with kafka_client.producer(kafka.bootstrap) as producer:

            async def follow() -> None:
                async for batch in kafka_client.read_batches(
                    kafka.bootstrap, topic, stop_at_end=False, poll_interval=wait
                ):
                    batches.append((batch.end_offset, [r.value for r in batch.records]))
                    if batch.records:
                        return

            with anyio.fail_after(wait * 3):
                async with anyio.create_task_group() as group:
                    group.start_soon(follow)
                    await anyio.sleep(1.0)  # the follower's first fetch is waiting
                    await kafka_client.send(producer, topic, b"k", b"landed")
        return batches

    batches = anyio.run(scenario)
    assert batches == [(1, [b"landed"])]


def test_the_importers_idle_fetch_wait_is_half_a_heartbeat_within_the_request_timeout() -> None:
    """Half a heartbeat interval, as short as before for the fast test heartbeats, and
    never near aiokafka's 40 s request timeout, whatever the configured heartbeat."""
    from agent.peering.importer import idle_fetch_wait

    assert idle_fetch_wait(0.2) == 0.1
    assert idle_fetch_wait(5.0) == 2.5
    assert idle_fetch_wait(3600.0) == 5.0


def test_compacted_topic_config_reads_back(
    kafka: DevBroker, topic_name: Callable[[str], str]
) -> None:
    """A compacted topic is created with our settings and the broker reports them back."""
    topic = topic_name("compact")

    async def scenario() -> dict[str, str]:
        created = await kafka_client.create_topic(
            kafka.bootstrap, topic, compacted=True, configs={"min.cleanable.dirty.ratio": "0.01"}
        )
        assert created
        # Creating it again is not an error: the caller learns it already existed.
        assert not await kafka_client.create_topic(kafka.bootstrap, topic, compacted=True)
        return await kafka_client.topic_config(kafka.bootstrap, topic)

    config = anyio.run(scenario)
    assert config["cleanup.policy"] == "compact"
    assert config["min.cleanable.dirty.ratio"] == "0.01"


def test_compaction_keeps_latest_value_per_key(
    kafka: DevBroker, topic_name: Callable[[str], str]
) -> None:
    """After the cleaner runs, a compacted topic holds only the newest record of each key."""
    topic = topic_name("cleaned")
    fast = {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100"}

    async def scenario() -> list[kafka_client.Record]:
        await kafka_client.create_topic(kafka.bootstrap, topic, compacted=True, configs=fast)
        async with kafka_client.producer(kafka.bootstrap) as producer:
            for round_ in range(5):
                for key in (b"a", b"b"):
                    await kafka_client.send(producer, topic, key, b"%s-%d" % (key, round_))
                await anyio.sleep(0.15)  # let segments roll so the old ones become cleanable
        with anyio.fail_after(60):
            while True:
                async with kafka_client.producer(kafka.bootstrap) as producer:
                    await kafka_client.send(producer, topic, b"roll", b"x")  # rolls the segment
                records = await _read_all(kafka.bootstrap, topic)
                if len([r for r in records if r.key in (b"a", b"b")]) == 2:
                    return records
                await anyio.sleep(0.5)

    records = anyio.run(scenario)
    latest = {r.key: r.value for r in records if r.key in (b"a", b"b")}
    assert latest == {b"a": b"a-4", b"b": b"b-4"}


def test_acknowledged_records_survive_broker_sigkill(broker_factory: BrokerFactory) -> None:
    """Every record acknowledged with acks=all is still readable after SIGKILL and restart."""
    broker = broker_factory.start("crashy")
    topic = "crash-safety"

    async def produce() -> list[int]:
        await kafka_client.create_topic(broker.bootstrap, topic, compacted=False)
        async with kafka_client.producer(broker.bootstrap) as producer:
            return [
                await kafka_client.send(producer, topic, None, f"r{i}".encode()) for i in range(200)
            ]

    acknowledged = anyio.run(produce)
    pid_before = broker.pid
    broker_factory.crash_and_restart(broker)
    assert broker.pid != pid_before

    records = anyio.run(_read_all, broker.bootstrap, topic)
    assert [r.offset for r in records] == acknowledged
    assert [r.value for r in records] == [f"r{i}".encode() for i in range(200)]


def test_second_independent_broker(kafka: DevBroker, broker_factory: BrokerFactory) -> None:
    """A second broker is a separate cluster: another id, and it cannot see our topics."""
    other = broker_factory.start("other")

    async def scenario() -> tuple[str, str, list[str]]:
        ours = await kafka_client.describe_cluster(kafka.bootstrap)
        theirs = await kafka_client.describe_cluster(other.bootstrap)
        await kafka_client.create_topic(other.bootstrap, "only-on-other", compacted=False)
        return ours.cluster_id, theirs.cluster_id, await kafka_client.list_topics(kafka.bootstrap)

    ours, theirs, shared_topics = anyio.run(scenario)
    assert ours != theirs
    assert "only-on-other" not in shared_topics


def test_dev_broker_command_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`peering dev-broker` prints a ready line after a metadata answer and exits 0 on SIGTERM."""
    from agent.devbroker import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "dev-broker", "--port", str(port), "--data-dir",
         str(tmp_path / "dev")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready_line = process.stdout.readline()
        assert f"ready on 127.0.0.1:{port}" in ready_line
        assert kafka_client.probe_sync(f"127.0.0.1:{port}", timeout=5)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        assert time.monotonic() - started < 40
        assert "stopped cleanly" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    # Nothing is left listening: the JVM went down with the command.
    assert not kafka_client.probe_sync(f"127.0.0.1:{port}", timeout=1)


def test_dev_broker_restart_keeps_topics(tmp_path: Path) -> None:
    """A broker restarted on the same data dir comes back with its topics and records."""
    broker = DevBroker(tmp_path / "keep")
    broker.start()
    try:
        broker.wait_ready()

        async def write() -> None:
            await kafka_client.create_topic(broker.bootstrap, "kept", compacted=True)
            async with kafka_client.producer(broker.bootstrap) as producer:
                await kafka_client.send(producer, "kept", b"k", b"v")

        anyio.run(write)
        assert broker.stop() in (0, 143)
        broker.start()
        broker.wait_ready()
        records = anyio.run(_read_all, broker.bootstrap, "kept")
        assert [(r.key, r.value) for r in records] == [(b"k", b"v")]
    finally:
        broker.stop()
