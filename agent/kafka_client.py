"""The one seam to Kafka: the only module that imports aiokafka.

Everything else receives plain values (bytes, offsets, topic names) from here. aiokafka runs on
asyncio, so callers use anyio on its asyncio backend. Nothing here relies on a broker quirk: it
speaks plain Kafka protocol to any broker of version 3.7 or later.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError as KafkaError  # re-exported: callers catch it
from aiokafka.helpers import create_ssl_context

log = logging.getLogger(__name__)

# Kafka protocol error code for "topic already exists" in a CreateTopics answer.
_TOPIC_ALREADY_EXISTS = 36
# ... and for "unknown topic" in a DeleteTopics answer.
_UNKNOWN_TOPIC = 3


class KafkaSecurity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS and SASL settings for one Kafka cluster (all optional: PLAINTEXT by default)."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""


class KafkaSettings(KafkaSecurity, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach one Kafka cluster: bootstrap servers plus optional TLS and SASL."""

    bootstrap: tuple[str, ...]

    @classmethod
    def secured(cls, bootstrap: tuple[str, ...], security: KafkaSecurity) -> KafkaSettings:
        fields = {f: getattr(security, f) for f in KafkaSecurity.__struct_fields__}
        return cls(bootstrap=bootstrap, **fields)

    @classmethod
    def plain(cls, bootstrap: str) -> KafkaSettings:
        """Settings for a comma-separated bootstrap list on a PLAINTEXT listener."""
        return cls(bootstrap=tuple(s.strip() for s in bootstrap.split(",") if s.strip()))

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's producer, consumer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


class ClusterInfo(msgspec.Struct, frozen=True):
    """What a metadata request told us about a Kafka cluster."""

    cluster_id: str
    controller_id: int
    brokers: tuple[str, ...]


class Record(msgspec.Struct, frozen=True):
    """One record as read from a partition, reduced to what the agent uses."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class Batch(msgspec.Struct, frozen=True):
    """One poll: its records and the partition's end offset as the broker last reported it."""

    records: list[Record]
    end_offset: int


def _settings(kafka: KafkaSettings | str) -> KafkaSettings:
    return kafka if isinstance(kafka, KafkaSettings) else KafkaSettings.plain(kafka)


@asynccontextmanager
async def admin_client(
    kafka: KafkaSettings | str, *, request_timeout: float = 10.0
) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        **_settings(kafka).client_options(), request_timeout_ms=int(request_timeout * 1000)
    )
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def describe_cluster(
    kafka: KafkaSettings | str, *, request_timeout: float = 5.0
) -> ClusterInfo:
    """Ask for cluster metadata; raises KafkaError or TimeoutError when nobody answers."""
    with anyio.fail_after(request_timeout):
        async with admin_client(kafka, request_timeout=request_timeout) as admin:
            answer = await admin.describe_cluster()
    return ClusterInfo(
        cluster_id=answer["cluster_id"],
        controller_id=answer["controller_id"],
        brokers=tuple(f"{b['host']}:{b['port']}" for b in answer["brokers"]),
    )


async def probe(kafka: KafkaSettings | str, *, request_timeout: float = 2.0) -> ClusterInfo | None:
    """describe_cluster, with "not (yet) reachable" as None instead of an exception."""
    try:
        return await describe_cluster(kafka, request_timeout=request_timeout)
    except (KafkaError, TimeoutError, OSError) as error:
        log.debug("probe of %s failed: %r", kafka, error)
        return None


def probe_sync(bootstrap: str, *, timeout: float = 2.0) -> bool:
    """probe() for synchronous callers such as the dev broker's readiness loop."""
    return anyio.run(lambda: probe(bootstrap, request_timeout=timeout)) is not None


async def create_topic(
    kafka: KafkaSettings | str,
    name: str,
    *,
    compacted: bool,
    partitions: int = 1,
    replication: int = 1,
    configs: dict[str, str] | None = None,
) -> bool:
    """Create a topic; True if created, False if it already existed. Other errors raise."""
    topic_configs = {"cleanup.policy": "compact" if compacted else "delete", **(configs or {})}
    async with admin_client(kafka) as admin:
        answer = await admin.create_topics(
            [NewTopic(name, partitions, replication, topic_configs=topic_configs)]
        )
    for _topic, code, message in answer.topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            return False
        if code != 0:
            raise KafkaError(f"creating topic {name!r} failed: error {code} {message}")
    return True


async def delete_topic(kafka: KafkaSettings | str, name: str) -> bool:
    """Delete a topic; True if deleted, False if it did not exist."""
    async with admin_client(kafka) as admin:
        answer = await admin.delete_topics([name])
    for _topic, code, *_rest in answer.topic_error_codes:
        if code == _UNKNOWN_TOPIC:
            return False
        if code != 0:
            raise KafkaError(f"deleting topic {name!r} failed: error {code}")
    return True


async def topic_config(kafka: KafkaSettings | str, name: str) -> dict[str, str]:
    """The effective configuration of a topic, as the broker reports it."""
    async with admin_client(kafka) as admin:
        answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    config: dict[str, str] = {}
    for answer in answers:
        for code, message, _type, _name, entries in answer.resources:
            if code != 0:
                raise KafkaError(f"describing topic {name!r} failed: error {code} {message}")
            for entry in entries:
                config[entry[0]] = entry[1]
    return config


async def list_topics(kafka: KafkaSettings | str) -> list[str]:
    async with admin_client(kafka) as admin:
        topics: list[str] = await admin.list_topics()
    return topics


# Records per produce request to one partition: aiokafka keeps one request in flight per
# broker and puts one batch per partition in it, so its 16 KiB default capped a burst at ~40
# stream records per round trip. Well under the stream topics' max.message.bytes (1 MiB).
MAX_BATCH_BYTES = 512 * 1024


@asynccontextmanager
async def producer(
    kafka: KafkaSettings | str, *, linger_ms: int = 0
) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer with acks=all: an acknowledged record survives a broker crash."""
    client = AIOKafkaProducer(
        **_settings(kafka).client_options(),
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=MAX_BATCH_BYTES,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def send(client: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes) -> int:
    """Send one record and wait for the acknowledgement; returns its offset."""
    metadata = await client.send_and_wait(topic, value=value, key=key)
    offset: int = metadata.offset
    return offset


async def send_batch(
    client: AIOKafkaProducer,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    *,
    partition: int = 0,
) -> list[int]:
    """Send records in order to one partition and wait for every acknowledgement; their
    offsets.

    Records are packed into as few record batches as fit (aiokafka's BatchBuilder): one
    future per batch instead of per record, which was most of the producer's cost per event.
    The next batch is queued while the previous one is in flight, and the idempotent
    producer keeps them in order, so a burst costs about one round trip per batch.
    """
    sent: list[tuple[Awaitable[Any], int]] = []
    batch, count = client.create_batch(), 0
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            sent.append((await client.send_batch(batch, topic, partition=partition), count))
            batch, count = client.create_batch(), 0
            # An empty batch always takes one record, however large (the broker judges it).
            batch.append(key=key, value=value, timestamp=None)
        count += 1
    if count:
        sent.append((await client.send_batch(batch, topic, partition=partition), count))
    offsets: list[int] = []
    for future, size in sent:
        base: int = (await future).offset
        offsets.extend(range(base, base + size))
    return offsets


async def end_offset(kafka: KafkaSettings | str, topic: str, partition: int = 0) -> int:
    """The offset the next record written to the partition will get."""
    consumer = AIOKafkaConsumer(**_settings(kafka).client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        offsets = await consumer.end_offsets([tp])
        end: int = offsets[tp]
        return end
    finally:
        await consumer.stop()


async def read_batches(
    kafka: KafkaSettings | str,
    topic: str,
    *,
    partition: int = 0,
    start_offset: int = 0,
    stop_at_end: bool = True,
    poll_interval: float = 0.5,
    max_records: int = 2000,
) -> AsyncIterator[Batch]:
    """Yield batches of records from ``start_offset`` on, without a consumer group.

    With ``stop_at_end`` the iteration ends at the end offset seen when it started (a bounded
    read, as replay and resync need); otherwise it follows the partition until cancelled and
    yields an empty batch after each idle poll, so the caller can do timed work. An offset
    that is no longer in the log (deleted or compacted away) continues from the earliest one.
    """
    consumer = AIOKafkaConsumer(
        **_settings(kafka).client_options(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_wait_ms=int(poll_interval * 1000),
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, max(0, start_offset))
        stop_before = (await consumer.end_offsets([tp]))[tp] if stop_at_end else None
        while True:
            if stop_before is not None and await consumer.position(tp) >= stop_before:
                return
            batches = await consumer.getmany(
                tp, timeout_ms=int(poll_interval * 1000), max_records=max_records
            )
            batch = [
                Record(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    timestamp_ms=message.timestamp,
                    key=message.key,
                    value=message.value,
                )
                for message in batches.get(tp, [])
                if stop_before is None or message.offset < stop_before
            ]
            if batch or stop_before is None:
                # highwater is what the last fetch answer said; None before any fetch.
                highwater = consumer.highwater(tp)
                end = highwater if highwater is not None else batch[-1].offset + 1 if batch else 0
                yield Batch(records=batch, end_offset=end)
    finally:
        await consumer.stop()


async def read_partition(
    kafka: KafkaSettings | str,
    topic: str,
    *,
    partition: int = 0,
    start_offset: int = 0,
    stop_at_end: bool = True,
    poll_interval: float = 0.5,
) -> AsyncIterator[Record]:
    """Record by record view of read_batches (idle polls are not reported)."""
    async for batch in read_batches(
        kafka,
        topic,
        partition=partition,
        start_offset=start_offset,
        stop_at_end=stop_at_end,
        poll_interval=poll_interval,
    ):
        for record in batch.records:
            yield record
