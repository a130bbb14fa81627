"""The importer loop of one peering: the peer's records in, imported catalog out.

Each consumer poll is folded by the pure reducer (``reducer.ingest``) and committed with its
last offset in one SQLite transaction (promise 5), so a crash re-reads at most what was not
committed and re-applying it changes nothing. A gap (seq jump, offset reset, epoch jump, a
live-key count that disagrees) rebuilds the peer's imported set from the compacted topic and
swaps it in atomically (promise 8).
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial

import anyio.lowlevel
import anyio.to_thread
import msgspec

from agent import kafka_client, metrics, reducer
from agent.peering.context import PeeringContext, kafka_label
from agent.peering.counts import ServiceCounts
from agent.peering.records import PeeringRecord
from agent.peering_state import PeerTerminated, RecordReceived
from agent.store import write_on_loop
from agent.store_peering import ImportCursor
from agent.wire.events import Heartbeat, InstanceRemove, InstanceUpsert

log = logging.getLogger("agent.peering")

_UPSERT = str(InstanceUpsert.__struct_config__.tag)
_REMOVE = str(InstanceRemove.__struct_config__.tag)
_HEARTBEAT = str(Heartbeat.__struct_config__.tag)


# A rebuild that still disagrees with the peer asks it to republish, at most this often
# (the mismatch is seen again on every heartbeat until the republish arrives).
REPUBLISH_REQUEST_INTERVAL = 2.0


class _Resync(Exception):
    """Internal: leave the live read and rebuild from the topic."""

    def __init__(self, why: reducer.ResyncRequired) -> None:
        super().__init__(why.why.value)
        self.why = why


def resync_needed(effects: list[tuple[int, list[reducer.Effect]]]) -> reducer.ResyncRequired | None:
    """The first gap a poll reveals, unless the poll also ends the stream.

    A Terminated after a gap is still the peer's last word: its exporter may have been
    stopped with a Seq block reserved (the peering being deleted), so its Terminated comes
    after a skipped range. Rebuilding would swallow the termination; the peering is over,
    so there is nothing left to repair.
    """
    flat = [e for _, record_effects in effects for e in record_effects]
    if any(isinstance(e, reducer.PeerTerminated) for e in flat):
        return None
    return next((e for e in flat if isinstance(e, reducer.ResyncRequired)), None)


def _touched_keys(effects: list[tuple[int, list[reducer.Effect]]]) -> list[str]:
    """The instance keys one batch upserted or removed, each once, sorted."""
    touched: set[str] = set()
    for _offset, record_effects in effects:
        for effect in record_effects:
            if isinstance(effect, reducer.Upserted | reducer.Removed):
                touched.add(effect.key)
    return sorted(touched)


class Importer:
    def __init__(self, ctx: PeeringContext, record: PeeringRecord) -> None:
        assert record.ImportKeyring is not None, "an established peering has keys"
        self.ctx = ctx
        self.record = record
        self.cursor = ctx.store.load_import(record.Name, record.ID, record.ImportKeyring)
        self.last_republish_request = float("-inf")
        # Instances per imported service, kept up to date batch by batch: recounting walked
        # the whole imported set per poll (at 100k instances, more time than applying).
        self.per_service = ServiceCounts(i.Name for i in self.cursor.state.Instances.values())
        # ?peer= reads answer from the store's imported view: it shares these instances
        # rather than loading its own copy on the first read.
        ctx.store.prime_imported(record.Name, self.cursor.state.Instances.values())

    async def apply_batch(self, batch: list[kafka_client.Record]) -> bool:
        """Fold and commit one poll; False when the peer terminated the peering."""
        ctx, record = self.ctx, self.record
        now = ctx.clock()
        ingested = reducer.ingest(
            [(r.offset, r.key, r.value) for r in batch],
            self.cursor.keyring,
            record.PrivateKey,
            now,
            self.cursor.state,
        )
        resync = resync_needed(ingested.effects)
        if resync is not None:
            raise _Resync(resync)
        # Net changes of the batch: the final instance of each touched key, or its removal.
        touched = _touched_keys(ingested.effects)
        before, after = self.cursor.state.Instances, ingested.state.Instances
        upserts = [after[k] for k in touched if k in after]
        removed = [k for k in touched if k not in after]
        for key in touched:
            if key in before:
                self.per_service.remove(before[key].Name)
            if key in after:
                self.per_service.add(after[key].Name)
        self.cursor = ImportCursor(state=ingested.state, keyring=ingested.keyring)
        # The batch goes to the in-memory imported view first, waking the blocking queries
        # that watch these services; one turn of the loop lets them answer before the commit
        # and the bookkeeping below (~0.3 ms of a change's way to a watcher on this machine).
        staged = ctx.store.stage_import(record.Name, upserts, removed)
        try:
            if staged is not None:
                await anyio.lowlevel.checkpoint()
            await write_on_loop(
                ctx.store,
                partial(ctx.store.commit_import, staged_index=staged),
                record.Name,
                record.ID,
                self.cursor,
                upserts,
                removed,
            )
        except BaseException:
            if staged is not None:
                ctx.store.unstage_import(record.Name)
            raise
        if staged is None:
            await anyio.lowlevel.checkpoint()  # the commit woke them: the same turn, later
        self._observe(ingested, now)
        return not any(
            isinstance(e, reducer.PeerTerminated)
            for _, effects in ingested.effects
            for e in effects
        )

    def _observe(self, ingested: reducer.Ingested, now: float) -> None:
        """Metrics and liveness for a committed batch; state changes go to the tracker."""
        name = self.record.Name
        metrics.set_kafka_connected(kafka_label(self.record.Kafka), True)
        heartbeat = False
        for _offset, effects in ingested.effects:
            for effect in effects:
                if isinstance(effect, reducer.Rejected):
                    metrics.RECORDS_REJECTED.labels(peer=name, reason=effect.reason.value).inc()
                    log.warning(
                        "rejected a stream record at offset %d: %s %s",
                        effect.offset, effect.reason.value, effect.detail,
                        extra={"peer": name, "peering_id": self.record.ID, "event": "reject"},
                    )  # fmt: skip
                elif isinstance(effect, reducer.HeartbeatSeen):
                    heartbeat = True
                    metrics.LAST_HEARTBEAT.labels(peer=name).set(now)
                elif isinstance(effect, reducer.RepublishRequested):
                    self.ctx.signals_for(name).request_republish()
                elif isinstance(effect, reducer.PeerTerminated):
                    self.ctx.tracker.feed(name, PeerTerminated(now, effect.reason))
        applied = _applied_events(ingested)
        # One labels() lookup per type and poll, not per event (a poll holds up to 2000).
        for event_type, count in Counter(kind for kind, _ in applied).items():
            metrics.EVENTS_APPLIED.labels(peer=name, type=event_type).inc(count)
        delay = metrics.PROPAGATION_DELAY.labels(peer=name)
        for _kind, changed_at in applied:
            if changed_at:
                delay.observe(max(0.0, now - changed_at))
        if applied or heartbeat:
            metrics.LAST_RECEIVED.labels(peer=name).set(now)
            self.ctx.tracker.feed(name, RecordReceived(now, heartbeat=heartbeat))

    def update_gauges(self) -> None:
        name = self.record.Name
        metrics.IMPORTED_INSTANCES.labels(peer=name).set(len(self.cursor.state.Instances))
        metrics.IMPORTED_SERVICES.labels(peer=name).set(len(self.per_service))

    async def resync(self, why: reducer.ResyncRequired) -> None:
        """Rebuild the imported set from the whole topic and swap it in atomically."""
        record = self.record
        log.warning(
            "resync of the imported set: %s %s", why.why.value, why.detail,
            extra={"peer": record.Name, "peering_id": record.ID, "event": "resync"},
        )  # fmt: skip
        metrics.RESYNCS.labels(peer=record.Name, reason=why.why.value).inc()
        records = [
            (r.offset, r.key, r.value)
            async for r in kafka_client.read_partition(record.Kafka, record.import_topic)
        ]
        assert record.ImportKeyring is not None
        # The keyring as last persisted knows every epoch the topic may still hold.
        state, keyring, rejects = reducer.rebuild(
            records, self.cursor.keyring, record.PrivateKey, self.ctx.clock()
        )
        # Keep LastSeq monotonic: a rebuild never moves the stream backwards. The offset is
        # where the topic is now: after a recreation the old position is meaningless, and
        # keeping it would skip (or resync on) every new record below it.
        state = msgspec.structs.replace(
            state,
            LastSeq=max(state.LastSeq, self.cursor.state.LastSeq),
            LastOffset=records[-1][0] if records else -1,
        )
        self.cursor = ImportCursor(state=state, keyring=keyring)
        self.per_service = ServiceCounts(i.Name for i in state.Instances.values())
        # The whole imported set in one transaction: a bulk write, off the event loop. It
        # forgets the imported view, which is then primed with the rebuilt set.
        await anyio.to_thread.run_sync(
            partial(self.ctx.store.commit_import, replace_all=True),
            record.Name,
            record.ID,
            self.cursor,
            list(state.Instances.values()),
            (),
        )
        self.ctx.store.prime_imported(record.Name, state.Instances.values())
        for reject in rejects:
            if reject.reason.value != "retired_epoch":
                metrics.RECORDS_REJECTED.labels(peer=record.Name, reason=reject.reason.value).inc()
        self.update_gauges()
        if state.PeerLiveKeys >= 0 and len(state.Instances) != state.PeerLiveKeys:
            # The topic alone cannot repair it (records lost, topic recreated, a forged
            # tombstone compacted a key away): ask the peer to republish everything.
            now = self.ctx.clock()
            if now - self.last_republish_request >= REPUBLISH_REQUEST_INTERVAL:
                self.last_republish_request = now
                log.warning(
                    "rebuilt %d instances but the peer has %d: asking it to republish",
                    len(state.Instances), state.PeerLiveKeys,
                    extra={"peer": record.Name, "peering_id": record.ID, "event": "resync"},
                )  # fmt: skip
                self.ctx.signals_for(record.Name).request_peer_republish()


def _applied_events(ingested: reducer.Ingested) -> list[tuple[str, float]]:
    """(event type, changed_at) of each applied event, for metrics."""
    result: list[tuple[str, float]] = []
    for _offset, effects in ingested.effects:
        for effect in effects:
            if isinstance(effect, reducer.Upserted):
                result.append((_UPSERT, effect.changed_at))
            elif isinstance(effect, reducer.Removed):
                result.append((_REMOVE, effect.changed_at))
            elif isinstance(effect, reducer.HeartbeatSeen):
                result.append((_HEARTBEAT, 0.0))
    return result


# The longest an idle fetch waits at the broker (well under aiokafka's 40 s request timeout).
MAX_IDLE_FETCH_WAIT = 5.0


def idle_fetch_wait(heartbeat_interval: float) -> float:
    """How long an importer's fetch waits at the broker when nothing arrives: half a
    heartbeat interval. The broker answers as soon as a record lands, so this sets only how
    often an idle stream is polled: with 50 peerings at the default 5 s heartbeat, waits of
    0.5 s (before) cost the exporting agent 6.6-6.8 % of a core in idle fetches and
    heartbeats, waits of 2.5 s 4.35-4.6 %. Nothing else waits on an idle poll: liveness has its
    own ticker, and the lag it updates is 0 while idle."""
    return min(MAX_IDLE_FETCH_WAIT, heartbeat_interval / 2)


async def run_importer(ctx: PeeringContext, name: str) -> None:
    """The importer loop of peering ``name``; returns when the peer terminated it."""
    record = ctx.tracker.get(name)
    if record is None:
        return
    importer = Importer(ctx, record)
    importer.update_gauges()
    while True:
        try:
            async for batch in kafka_client.read_batches(
                record.Kafka,
                record.import_topic,
                start_offset=importer.cursor.state.LastOffset + 1,
                stop_at_end=False,
                poll_interval=idle_fetch_wait(ctx.heartbeat_interval),
            ):
                if batch.records and not await importer.apply_batch(batch.records):
                    return
                lag = max(0, batch.end_offset - (importer.cursor.state.LastOffset + 1))
                metrics.CONSUMER_LAG.labels(peer=record.Name).set(lag)
                if batch.records:
                    importer.update_gauges()
        except _Resync as resync:
            await importer.resync(resync.why)
