"""The exporter loop of one peering: exported-view changes in, encrypted records out.

On start it reconciles the current exported view with what it last published (promise 5),
republishing everything when the topic lost acknowledged records; then it follows the
exported-changes feed of the agent core, sends heartbeats, and serves republish and
key-rotation requests. Sequence numbers are reserved in SQLite, a block at a time, before
producing and the published fingerprints recorded only after the broker acknowledged, so a
crash never reuses a Seq and never marks an unsent change as published.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
import msgspec

from agent import kafka_client, metrics, reducer
from agent.model import ServiceInstance
from agent.peering.context import PeeringContext, PeeringSignals, kafka_label
from agent.peering.counts import ExportedCounts
from agent.peering.records import PeeringRecord
from agent.peering_state import RecordSent
from agent.store import write_on_loop
from agent.store_peering import PublisherCursor
from agent.wire.envelope import encode_event
from agent.wire.events import Event, InstanceRemove, InstanceUpsert, instance_key
from agent.wire.keys import StreamKeyring

log = logging.getLogger("agent.peering")

FEED_BATCH = 5000


def wire_view(view: dict[str, ServiceInstance]) -> dict[str, ServiceInstance]:
    """The exported view keyed as on the wire (``instance/<id>``)."""
    return {instance_key(key): instance for key, instance in view.items()}


def _published_changes(
    before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, str | None]:
    """The fingerprint rows to write to go from ``before`` to ``after`` (None removes)."""
    changes: dict[str, str | None] = {key: None for key in before if key not in after}
    changes.update((key, fp) for key, fp in after.items() if before.get(key) != fp)
    return changes


def _fingerprint_changes(events: list[Event]) -> dict[str, str | None]:
    changes: dict[str, str | None] = {}
    for event in events:
        if isinstance(event, InstanceUpsert):
            changes[event.Key] = reducer.fingerprint(event.Instance)
        elif isinstance(event, InstanceRemove):
            changes[event.Key] = None
    return changes


class Exporter:
    """Owns the publisher cursor of one stream while its loop runs."""

    def __init__(self, ctx: PeeringContext, record: PeeringRecord, producer: Any) -> None:
        assert record.ExportKeyring is not None, "an established peering has keys"
        self.ctx = ctx
        self.record = record
        self.producer = producer
        loaded = ctx.store.load_publisher(record.ID, record.ExportKeyring)
        self.cursor = msgspec.structs.replace(
            loaded, state=reducer.resume_publisher(loaded.state, loaded.seq_ceiling)
        )
        self.last_send = 0.0
        # True between a Seq reservation and the bookkeeping after its ack: records may be
        # on their way to the broker, so the rest of the Seq block must stay reserved.
        self.in_flight = False
        self.counts = ExportedCounts()

    async def publish(
        self,
        new_state: reducer.PublisherState,
        events: list[Event],
        *,
        feed_seq: int | None = None,
        keyring: StreamKeyring | None = None,
        full: bool = False,
    ) -> None:
        """Produce ``events`` and move the cursor to ``new_state`` once they are acked."""
        if not events and feed_seq is None:
            return
        store, record = self.ctx.store, self.record
        next_keyring = self.cursor.keyring if keyring is None else keyring
        ceiling = reducer.seq_ceiling_for(self.cursor.seq_ceiling, self.cursor.state, new_state)
        rekeyed = keyring is not None or new_state.Epoch != self.cursor.state.Epoch
        if events and (ceiling is not None or rekeyed):
            # Durable before anything is produced: the Seq block, and the keyring a new
            # epoch's records are sealed with. Between blocks no fsync is on the path. The
            # ceiling in memory only ever moves together with this durable write: the saves
            # after an ack are not fsync'd, so a ceiling first written by one of them could
            # vanish in a power loss while Seqs under it were already on the broker.
            reserved = msgspec.structs.replace(
                self.cursor,
                state=msgspec.structs.replace(self.cursor.state, Epoch=new_state.Epoch),
                keyring=next_keyring,
                seq_ceiling=self.cursor.seq_ceiling if ceiling is None else ceiling,
            )
            await write_on_loop(store, store.save_publisher, record.ID, reserved)
            self.cursor = msgspec.structs.replace(self.cursor, seq_ceiling=reserved.seq_ceiling)
        self.in_flight = bool(events)
        offsets = await kafka_client.send_batch(
            self.producer, record.export_topic, [encode_event(next_keyring, e) for e in events]
        )
        acked_end = max([self.cursor.acked_end, *(offset + 1 for offset in offsets)])
        if full:
            # The stored rows are the cursor's (every save writes its changes): only the
            # difference is written, not the whole view again.
            fingerprints = _published_changes(self.cursor.state.Published, new_state.Published)
        else:
            fingerprints = _fingerprint_changes(events)
        self.cursor = PublisherCursor(
            state=new_state,
            keyring=next_keyring,
            feed_seq=self.cursor.feed_seq if feed_seq is None else feed_seq,
            acked_end=acked_end,
            seq_ceiling=self.cursor.seq_ceiling,
        )
        # Not fsync'd: a power loss rolls back to the (durable) reservation; see save_publisher.
        await write_on_loop(
            store,
            partial(store.save_publisher, durable=False),
            record.ID,
            self.cursor,
            fingerprints,
        )
        self.in_flight = False
        if events:
            now = self.ctx.clock()
            self.last_send = now
            metrics.set_kafka_connected(kafka_label(record.Kafka), True)
            metrics.LAST_SENT.labels(peer=record.Name).set(now)
            # One labels() lookup per type and batch, not per event (a 5000-event batch).
            for kind, count in Counter(event_type(e) for e in events).items():
                metrics.EVENTS_PUBLISHED.labels(peer=record.Name, type=kind).inc(count)
            self.ctx.tracker.feed(record.Name, RecordSent(now))

    def release_unused_seqs(self) -> None:
        """On a clean stop, give back the rest of the Seq block so the next start continues
        without a gap (the peer would resync for nothing). Not while records may be in
        flight: their Seqs must stay used."""
        if self.in_flight or self.cursor.seq_ceiling <= self.cursor.state.NextSeq:
            return
        self.cursor = msgspec.structs.replace(self.cursor, seq_ceiling=self.cursor.state.NextSeq)
        self.ctx.store.save_publisher(self.record.ID, self.cursor)

    async def start(self) -> None:
        """Reconcile after (re)start; republish all when the topic lost acked records."""
        store, record = self.ctx.store, self.record
        end = await kafka_client.end_offset(record.Kafka, record.export_topic)
        feed_seq = store.last_exported_seq(record.Name)
        desired = wire_view(store.exported_view(record.Name))
        now = self.ctx.clock()
        if end < self.cursor.acked_end:
            log.warning(
                "stream topic lost records (end %d < acked %d): republishing the full view",
                end, self.cursor.acked_end,
                extra={"peer": record.Name, "peering_id": record.ID, "event": "republish"},
            )  # fmt: skip
            # acked_end restarts from the topic as it is now.
            self.cursor = msgspec.structs.replace(self.cursor, acked_end=end)
            state, events = reducer.republish_all(self.cursor.state, desired, now, "topic lost")
            await self.publish(state, events, feed_seq=feed_seq, full=True)
        else:
            if end > self.cursor.acked_end:
                await self.catch_up(end)
            state, events = reducer.reconcile(self.cursor.state, desired, now, head_reason="start")
            await self.publish(state, events, feed_seq=feed_seq, full=True)
        self.recount(desired)

    async def catch_up(self, end: int) -> None:
        """Take in our own records the cursor does not know were acknowledged, up to ``end``
        (see reducer.catch_up): a few after a crash, everything since the backup after the
        data dir was restored from one."""
        store, record, cursor = self.ctx.store, self.record, self.cursor
        records = [
            (r.key, r.value)
            async for r in kafka_client.read_partition(
                record.Kafka, record.export_topic, start_offset=cursor.acked_end
            )
            if r.offset < end
        ]
        caught = reducer.catch_up(cursor.state, cursor.keyring, records)
        if caught.LastSeq >= cursor.state.NextSeq:
            log.warning(
                "the stream topic is ahead of this agent's state (data dir restored from a"
                " backup?): %d records past offset %d, Seq up to %d where this state"
                " resumes at %d; continuing after them and reconciling with the topic",
                len(records), cursor.acked_end, caught.LastSeq, cursor.state.NextSeq,
                extra={"peer": record.Name, "peering_id": record.ID, "event": "catch_up"},
            )  # fmt: skip
        if caught.Unreadable:
            log.error(
                "%d records on the stream topic use key epochs this agent does not hold (its"
                " state is older than a key rotation, e.g. restored from a backup): the peer"
                " will refuse what it publishes; delete and establish the peering again",
                caught.Unreadable,
                extra={"peer": record.Name, "peering_id": record.ID, "event": "catch_up"},
            )  # fmt: skip
        changes = _published_changes(cursor.state.Published, caught.State.Published)
        self.cursor = msgspec.structs.replace(cursor, state=caught.State, acked_end=end)
        # Not fsync'd, like every post-acknowledgement save: the Seqs past the ceiling are
        # reserved durably before the reconcile that follows produces anything.
        await write_on_loop(
            store, partial(store.save_publisher, durable=False), record.ID, self.cursor, changes
        )

    def recount(self, view: dict[str, ServiceInstance]) -> None:
        """Start the counts over from a whole view the caller has read anyway."""
        self.counts = ExportedCounts(view)
        self.update_gauges()

    def update_gauges(self) -> None:
        name = self.record.Name
        metrics.EXPORTED_INSTANCES.labels(peer=name).set(self.counts.instances)
        metrics.EXPORTED_SERVICES.labels(peer=name).set(self.counts.services)

    async def follow_feed(self) -> bool:
        """Publish pending feed rows; True when there were any."""
        rows = self.ctx.store.exported_changes(
            self.record.Name, self.cursor.feed_seq, limit=FEED_BATCH
        )
        if not rows:
            return False
        now = self.ctx.clock()
        changes = [(instance_key(r.Key), r.Instance, r.ChangedAt) for r in rows]
        state, events = reducer.publish_changes(self.cursor.state, changes, now)
        await self.publish(state, events, feed_seq=rows[-1].Seq)
        for key, instance, _changed_at in changes:
            self.counts.put(key, instance)
        self.update_gauges()
        return True

    async def republish(self, reason: str) -> None:
        desired = wire_view(self.ctx.store.exported_view(self.record.Name))
        state, events = reducer.republish_all(self.cursor.state, desired, self.ctx.clock(), reason)
        await self.publish(state, events, full=True)
        self.recount(desired)

    async def rotate(self) -> None:
        """Move the stream to a new key epoch, then republish everything under it."""
        record, now = self.record, self.ctx.clock()
        state, keyring, event = reducer.rotate(
            self.cursor.state, self.cursor.keyring, record.PeerPublicKey, now
        )
        # The rotation announcement travels under the old epoch; the records after it use the
        # new one. The keyring with both epochs is persisted before anything is produced.
        await self.publish(state, [event], keyring=keyring)
        desired = wire_view(self.ctx.store.exported_view(record.Name))
        state, events = reducer.republish_all(
            self.cursor.state, desired, now, "key rotation", retire_epochs_below=state.Epoch
        )
        await self.publish(state, events, full=True)
        self.recount(desired)
        metrics.KEY_ROTATIONS.labels(peer=record.Name).inc()
        log.info(
            "stream keys rotated",
            extra={"peer": record.Name, "peering_id": record.ID, "event": "key_rotation",
                   "epoch": state.Epoch},
        )  # fmt: skip

    async def request_resync(self, reason: str) -> None:
        """Ask the peer to republish the stream we import (sent on the stream we export)."""
        state, event = reducer.request_resync(self.cursor.state, self.ctx.clock(), reason)
        await self.publish(state, [event])

    async def heartbeat(self) -> None:
        state, event = reducer.heartbeat(self.cursor.state, self.ctx.clock())
        await self.publish(state, [event])

    async def terminate(self, reason: str) -> None:
        state, event = reducer.terminate(self.cursor.state, self.ctx.clock(), reason)
        await self.publish(state, [event])


def event_type(event: Event) -> str:
    return str(type(event).__struct_config__.tag)


async def run_exporter(ctx: PeeringContext, name: str) -> None:
    """The exporter loop of peering ``name``; returns only when cancelled."""
    record = ctx.tracker.get(name)
    if record is None:
        return
    signals = ctx.signals_for(name)
    async with kafka_client.producer(record.Kafka) as producer:
        exporter = Exporter(ctx, record, producer)
        try:
            await _follow(ctx, exporter, signals)
        finally:
            exporter.release_unused_seqs()


async def _follow(ctx: PeeringContext, exporter: Exporter, signals: PeeringSignals) -> None:
    """Serve requests and publish feed rows as they come; heartbeat when idle.

    ``signals.woken`` is set by the store when this peer's feed grew (see
    ``supervise``) and by requests: imports, heartbeats and changes exported only to other
    peers leave this loop asleep. It is cleared before the feed is read, so a row committed
    meanwhile sets it again and is picked up on the next round.
    """
    await exporter.start()
    while True:
        if signals.woken.is_set():
            signals.woken = anyio.Event()
        if signals.rotate.is_set():
            signals.rotate = anyio.Event()
            await exporter.rotate()
        if signals.republish.is_set():
            signals.republish = anyio.Event()
            await exporter.republish("requested by the peer")
        if signals.ask_peer_republish.is_set():
            signals.ask_peer_republish = anyio.Event()
            await exporter.request_resync("rebuilt imported set disagrees with the peer")
        while await exporter.follow_feed():
            pass
        if ctx.clock() - exporter.last_send >= ctx.heartbeat_interval:
            await exporter.heartbeat()
        wait = max(0.0, ctx.heartbeat_interval - (ctx.clock() - exporter.last_send))
        with anyio.move_on_after(wait):
            await signals.woken.wait()
