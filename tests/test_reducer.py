"""Importer reducer (apply/replay/rebuild) and exporter reconcile, without Kafka."""

from __future__ import annotations

import immutables
import msgspec

from agent import crypto
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.reducer import (
    SEQ_BLOCK,
    HeartbeatSeen,
    ImportMode,
    ImportState,
    PeerTerminated,
    PublisherState,
    Rejected,
    Removed,
    RepublishRequested,
    ResyncReason,
    ResyncRequired,
    RotatedKeys,
    Upserted,
    apply,
    catch_up,
    fingerprint,
    heartbeat,
    ingest,
    publish_changes,
    rebuild,
    reconcile,
    replay,
    republish_all,
    request_resync,
    resume_publisher,
    rotate,
    seq_ceiling_for,
    terminate,
)
from agent.wire.envelope import Reject, decode_record, encode_event
from agent.wire.events import Event, InstanceRemove, InstanceUpsert, UnknownEvent, instance_key
from agent.wire.keys import StreamKeyring
from agent.wire.reasons import RejectReason
from tests.wire_helpers import NOW, Established, seeded_random


def inst(n: int, status: CheckStatus = CheckStatus.PASSING) -> ServiceInstance:
    """Instance web-n with one check."""
    check = HealthCheck(CheckID=f"service:web-{n}", Name="ttl", Status=status)
    return ServiceInstance(ID=f"web-{n}", Name="web", Port=8000 + n, Checks=(check,))


def view(*ns: int) -> dict[str, ServiceInstance]:
    """The exported view for instances web-n."""
    return {instance_key(f"web-{n}"): inst(n) for n in ns}


class Topic:
    """An in-memory append-only stream topic with Kafka-like offsets and compaction."""

    def __init__(self, keyring: StreamKeyring) -> None:
        self.keyring = keyring
        self.records: list[tuple[int, bytes | None, bytes | None]] = []

    def publish(self, events: list[Event]) -> None:
        for event in events:
            key, value = encode_event(self.keyring, event, seeded_random(len(self.records)))
            self.records.append((len(self.records), key, value))

    def compacted(self) -> list[tuple[int, bytes | None, bytes | None]]:
        latest = {key: offset for offset, key, _ in self.records}
        return [r for r in self.records if latest[r[1]] == r[0]]


def run_live(state: ImportState, topic: Topic, start: int = 0) -> tuple[ImportState, list[object]]:
    """Feed the topic's records from ``start`` into apply, live."""
    effects: list[object] = []
    for offset, key, value in topic.records[start:]:
        state, out = apply(state, offset, decode_record(topic.keyring, key, value), NOW + offset)
        effects.extend(out)
    return state, effects


def test_upserts_and_removes_reach_the_imported_set() -> None:
    """Reconciled events applied live give exactly the exporter's view."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1, 2), NOW)
    topic.publish(events)
    pub, events = reconcile(pub, view(2, 3), NOW)
    topic.publish(events)
    state, effects = run_live(ImportState(), topic)
    assert dict(state.Instances) == view(2, 3)
    assert Removed(instance_key("web-1"), changed_at=NOW) in effects
    assert state.LastSeq == pub.NextSeq - 1
    assert state.LastOffset == len(topic.records) - 1


def test_health_change_propagates() -> None:
    """A check going critical republishes the instance and the importer sees it."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    topic.publish(events)
    critical = {instance_key("web-1"): inst(1, CheckStatus.CRITICAL)}
    pub, events = reconcile(pub, critical, NOW)
    assert len(events) == 1
    topic.publish(events)
    state, _ = run_live(ImportState(), topic)
    assert state.Instances[instance_key("web-1")].status is CheckStatus.CRITICAL


def test_reapplying_records_is_idempotent() -> None:
    """Feeding the same records again (crash before commit) changes nothing."""
    peers = Established()
    topic = Topic(peers.a2d)
    topic.publish(reconcile(PublisherState(), view(1, 2, 3), NOW)[1])
    state, _ = run_live(ImportState(), topic)
    again, effects = run_live(state, topic)
    assert again == state
    assert effects == []


def test_replayed_record_appended_later_is_rejected() -> None:
    """An attacker re-producing an old record at a new offset gets REPLAY, no effect."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    topic.publish(events)
    pub, events = reconcile(pub, view(), NOW)
    topic.publish(events)
    _, key, value = topic.records[0]
    topic.records.append((len(topic.records), key, value))  # the old upsert again
    state, effects = run_live(ImportState(), topic)
    assert dict(state.Instances) == {}
    assert effects[-1] == Rejected(RejectReason.REPLAY, 2, "seq 1")


def test_forged_records_are_counted_and_do_nothing() -> None:
    """Rejects advance the offset (so the shell commits past them) but change no instance."""
    state, effects = apply(ImportState(), 5, Reject(RejectReason.DECRYPT_FAILED), NOW)
    assert dict(state.Instances) == {}
    assert state.LastOffset == 5
    assert state.LastReceiveAt == 0.0
    assert effects == [Rejected(RejectReason.DECRYPT_FAILED, 5)]


def test_seq_gap_live_requires_resync() -> None:
    """A missing Seq in live mode yields ResyncRequired(SEQ_GAP)."""
    peers = Established()
    topic = Topic(peers.a2d)
    topic.publish(reconcile(PublisherState(), view(1, 2, 3), NOW)[1])
    del topic.records[1]
    _state, effects = run_live(ImportState(), topic)
    assert any(isinstance(e, ResyncRequired) and e.why is ResyncReason.SEQ_GAP for e in effects)


def test_offset_reset_requires_resync() -> None:
    """New events at offsets already passed (topic recreated) yield OFFSET_RESET."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    topic.publish(events)
    state, _ = run_live(ImportState(), topic)
    pub, events = republish_all(pub, view(1, 2), NOW, "topic recreated")
    fresh = Topic(peers.a2d)
    fresh.publish(events)
    _, effects = run_live(state, fresh)
    assert effects[0] == ResyncRequired(ResyncReason.OFFSET_RESET, "offset 0")


def test_old_epoch_record_after_rotation_is_rejected() -> None:
    """After a rotation, a record sealed under the old epoch (later Seq) is OLD_EPOCH."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    topic.publish(events)
    importer_pub = crypto.public_key(peers.dialer_private)
    old_ring = topic.keyring
    pub, topic.keyring, rotation = rotate(pub, topic.keyring, importer_pub, NOW, seeded_random(3))
    topic.publish([rotation])
    pub, events = reconcile(pub, view(1, 2), NOW)
    topic.publish(events)
    # An insider with the old key (or a bug) seals a newer Seq under epoch 1.
    stale = InstanceUpsert(
        Epoch=1,
        Seq=pub.NextSeq,
        SentAt=NOW,
        Key=instance_key("web-9"),
        Instance=inst(9),
        ChangedAt=NOW,
    )
    key, value = encode_event(old_ring, stale)
    topic.records.append((len(topic.records), key, value))
    steps = list(replay(topic.records, peers.a2d, peers.dialer_private, NOW, mode=ImportMode.LIVE))
    final_state = steps[-1][0].state
    assert instance_key("web-9") not in final_state.Instances
    assert dict(final_state.Instances) == view(1, 2)
    assert steps[-1][0].effects == [
        Rejected(RejectReason.OLD_EPOCH, len(topic.records) - 1, "epoch 1")
    ]
    assert any(isinstance(e, RotatedKeys) for step, _ in steps for e in step.effects)


def test_rotation_loses_and_repeats_nothing() -> None:
    """Rotation + full republish: the importer ends with the exact view, no resync."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1, 2), NOW)
    topic.publish(events)
    pub, topic.keyring, rotation = rotate(
        pub, topic.keyring, crypto.public_key(peers.dialer_private), NOW
    )
    topic.publish([rotation])
    pub, events = republish_all(pub, view(2, 3), NOW, "rotation", retire_epochs_below=2)
    topic.publish(events)
    _hb_state, hb = heartbeat(pub, NOW)
    topic.publish([hb])
    steps = list(replay(topic.records, peers.a2d, peers.dialer_private, NOW, mode=ImportMode.LIVE))
    final, keyring = steps[-1]
    assert dict(final.state.Instances) == view(2, 3)
    assert keyring.CurrentEpoch == 2
    assert set(keyring.EpochSecrets) == {2}
    effects = [e for step, _ in steps for e in step.effects]
    assert not any(isinstance(e, ResyncRequired | Rejected) for e in effects)


def test_rebuild_from_compacted_topic_equals_exported_view() -> None:
    """After compaction (across a rotation), rebuild yields exactly the exported view."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub = PublisherState()
    for desired in (view(1, 2, 3), view(2, 3), view(2, 3, 4)):
        pub, events = reconcile(pub, desired, NOW)
        topic.publish(events)
    pub, topic.keyring, rotation = rotate(
        pub, topic.keyring, crypto.public_key(peers.dialer_private), NOW
    )
    topic.publish([rotation])
    pub, events = reconcile(pub, view(3, 4, 5), NOW)
    topic.publish(events)
    pub, hb = heartbeat(pub, NOW)
    topic.publish([hb])
    compacted = topic.compacted()
    assert len(compacted) < len(topic.records)
    state, keyring, rejects = rebuild(compacted, peers.a2d, peers.dialer_private, NOW)
    assert dict(state.Instances) == view(3, 4, 5)
    assert rejects == []
    assert keyring.CurrentEpoch == 2
    assert state.PeerLiveKeys == 3


def test_count_mismatch_requires_resync() -> None:
    """A heartbeat whose live key count differs from ours yields COUNT_MISMATCH."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1, 2), NOW)
    topic.publish(events[:1])  # the second upsert was lost (e.g. forged tombstone)
    pub, hb = heartbeat(pub, NOW)
    topic.publish([hb])
    _, effects = run_live(ImportState(), topic)
    assert any(
        isinstance(e, ResyncRequired) and e.why is ResyncReason.COUNT_MISMATCH for e in effects
    )


def test_heartbeat_updates_liveness_times() -> None:
    """A heartbeat sets LastHeartbeatAt and LastReceiveAt to the injected now."""
    peers = Established()
    topic = Topic(peers.a2d)
    _, hb = heartbeat(PublisherState(), NOW)
    topic.publish([hb])
    state, effects = run_live(ImportState(), topic)
    assert effects == [HeartbeatSeen(NOW)]
    assert state.LastHeartbeatAt == NOW
    assert state.LastReceiveAt == NOW


def test_terminated_event() -> None:
    """A Terminated event marks the state and yields PeerTerminated."""
    peers = Established()
    topic = Topic(peers.a2d)
    _, event = terminate(PublisherState(), NOW, "deleted by operator")
    topic.publish([event])
    state, effects = run_live(ImportState(), topic)
    assert state.Terminated
    assert effects == [PeerTerminated("deleted by operator")]


def test_unknown_event_consumes_seq_without_gap() -> None:
    """An UnknownEvent is rejected as UNKNOWN_TYPE but its Seq counts, so no gap follows."""
    state, effects = apply(ImportState(), 0, UnknownEvent(Type="x", Epoch=1, Seq=1), NOW)
    assert effects == [Rejected(RejectReason.UNKNOWN_TYPE, 0, "x")]
    assert state.LastSeq == 1
    _hb_state, hb = heartbeat(PublisherState(NextSeq=2), NOW)
    _, effects = apply(state, 1, msgspec.structs.replace(hb, LiveKeys=0), NOW)
    assert effects == [HeartbeatSeen(NOW)]


def test_remove_of_unknown_key_is_quiet() -> None:
    """Removing a key the importer never had emits no Removed effect."""
    remove = InstanceRemove(Epoch=1, Seq=1, SentAt=NOW, Key="instance/x", ChangedAt=NOW)
    state, effects = apply(ImportState(), 0, remove, NOW)
    assert effects == []
    assert state.LastSeq == 1


def test_reconcile_after_restart_publishes_only_differences() -> None:
    """Reconcile against the published fingerprints emits only changed keys."""
    pub, events = reconcile(PublisherState(), view(1, 2), NOW)
    assert [e.Seq for e in events] == [1, 2]
    again, none = reconcile(pub, view(1, 2), NOW)
    assert none == []
    assert again == pub
    _, diff = reconcile(pub, view(2, 3), NOW)
    assert [type(e).__name__ for e in diff] == ["InstanceUpsert", "InstanceRemove"]


def test_fingerprint_ignores_meta_order() -> None:
    """Instances equal up to Meta insertion order have the same fingerprint."""
    a = ServiceInstance(ID="x", Name="x", Meta={"a": "1", "b": "2"})
    b = ServiceInstance(ID="x", Name="x", Meta={"b": "2", "a": "1"})
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(msgspec.structs.replace(a, Port=1))


def test_upserted_effects_carry_instances() -> None:
    """Upserted effects name the key, the instance and when the exporter saw the change."""
    _, events = reconcile(PublisherState(), view(1), NOW)
    _, effects = apply(ImportState(), 0, events[0], NOW)
    assert effects == [Upserted(instance_key("web-1"), inst(1), changed_at=NOW)]


def test_crash_between_reserve_and_ack_loses_no_change() -> None:
    """Exporter crash after reserving Seqs but before the ack: the restart resumes at the
    persisted ceiling, the change is resent with new Seqs, the importer resyncs on the gap
    and ends with the exporter's view."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    ceiling = seq_ceiling_for(0, PublisherState(), pub)
    assert ceiling is not None
    topic.publish(events)
    state, _ = run_live(ImportState(), topic)
    planned, lost_events = reconcile(pub, view(1, 2), NOW)
    assert seq_ceiling_for(ceiling, pub, planned) is None  # inside the block: nothing to persist
    # crash: lost_events never reached the broker, pub is what was saved after the last ack
    restarted = resume_publisher(pub, ceiling)
    assert restarted.Published == pub.Published
    _, events = reconcile(restarted, view(1, 2), NOW)
    assert events[0].Seq > lost_events[-1].Seq
    topic.publish(events)
    state, effects = run_live(state, topic, start=len(topic.records) - len(events))
    assert dict(state.Instances) == view(1, 2)
    assert any(isinstance(e, ResyncRequired) and e.why is ResyncReason.SEQ_GAP for e in effects)


def test_seq_ceiling_reserves_a_block_only_when_the_batch_passes_it() -> None:
    """One durable reservation covers SEQ_BLOCK Seqs; a batch larger than a block gets a
    ceiling beyond its own end; a publish that uses no Seq (only the feed position moves)
    reserves nothing, even with no ceiling yet (the ceiling must only move durably)."""
    first = PublisherState()
    assert seq_ceiling_for(0, first, PublisherState(NextSeq=2)) == 2 + SEQ_BLOCK
    assert seq_ceiling_for(0, first, first) is None
    at = PublisherState(NextSeq=1 + SEQ_BLOCK)
    assert seq_ceiling_for(1 + SEQ_BLOCK, first, at) is None
    assert seq_ceiling_for(100, PublisherState(NextSeq=100), PublisherState(NextSeq=101)) == (
        101 + SEQ_BLOCK
    )
    big = PublisherState(NextSeq=5 * SEQ_BLOCK)
    assert seq_ceiling_for(10, first, big) == 6 * SEQ_BLOCK


def test_resume_never_goes_below_the_ceiling() -> None:
    """After a restart the next Seq is the persisted ceiling, or NextSeq when it is higher
    (data dirs from before Seq blocks have no ceiling)."""
    assert resume_publisher(PublisherState(NextSeq=7), 1007).NextSeq == 1007
    assert resume_publisher(PublisherState(NextSeq=7), 0).NextSeq == 7
    assert resume_publisher(PublisherState(NextSeq=7), 7).NextSeq == 7


def test_catch_up_continues_after_the_topic_from_an_older_state() -> None:
    """A publisher state older than its topic (data dir restored from a backup) continues
    after the topic's highest Seq, with the fingerprints the topic carries, so the
    reconcile that follows brings the importer back to the restored view: no Seq reused
    (dropped as a replay), no newer value or newer key left behind on the importer."""
    peers = Established()
    topic = Topic(peers.a2d)
    backup, events = reconcile(PublisherState(), view(1, 2), NOW)
    topic.publish(events)
    backed_up_at = len(topic.records)
    # After the backup: web-1 changed, web-2 removed, web-3 added, a heartbeat.
    newer, events = reconcile(
        backup, {**view(3), instance_key("web-1"): inst(1, CheckStatus.CRITICAL)}, NOW
    )
    newer, beat = heartbeat(newer, NOW)
    topic.publish([*events, beat])
    importer, _ = run_live(ImportState(), topic)

    tail = [(key, value) for _, key, value in topic.records[backed_up_at:]]
    tail.append((None, None))  # a compaction tombstone is not ours to read
    caught = catch_up(backup, peers.a2d, tail)
    assert caught.LastSeq == beat.Seq
    assert caught.Unreadable == 0
    assert caught.State.NextSeq == beat.Seq + 1
    assert caught.State.Published == newer.Published
    assert backup.Published == reconcile(PublisherState(), view(1, 2), NOW)[0].Published

    restored_view = view(1, 2)
    _, events = reconcile(caught.State, restored_view, NOW)
    topic.publish(events)
    importer, effects = run_live(importer, topic, start=len(topic.records) - len(events))
    assert dict(importer.Instances) == restored_view
    assert not [e for e in effects if isinstance(e, Rejected | ResyncRequired)]


def test_catch_up_counts_records_under_a_newer_epoch_and_keeps_a_newer_state() -> None:
    """Records under an epoch the keyring lacks (a rotation newer than the state) are
    counted, not guessed at; records of another stream are ignored, as the importer would;
    a state already past the tail (the usual crash before the post-ack save) keeps its
    NextSeq."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub, events = reconcile(PublisherState(), view(1), NOW)
    topic.publish(events)
    old_ring = topic.keyring
    importer_pub = crypto.public_key(peers.dialer_private)
    pub, topic.keyring, rotation = rotate(pub, topic.keyring, importer_pub, NOW, seeded_random(3))
    topic.publish([rotation])
    pub, events = republish_all(pub, view(1), NOW, "key rotation")
    topic.publish(events)
    stranger = Topic(Established(seed=2).a2d)
    stranger.publish(reconcile(PublisherState(), view(7), NOW)[1])
    ahead = PublisherState(NextSeq=50)
    records = [(k, v) for _, k, v in topic.records[1:] + stranger.records]
    caught = catch_up(ahead, old_ring, records)
    assert caught.Unreadable == len(events)  # the republish under the new epoch
    assert caught.LastSeq == rotation.Seq  # the announcement travels under the old epoch
    assert caught.State.NextSeq == 50
    assert caught.State.Published == ahead.Published


def test_resync_request_reaches_the_other_exporter() -> None:
    """A ResyncRequest on the reverse stream yields RepublishRequested for its reader."""
    peers = Established()
    topic = Topic(peers.d2a)
    _, event = request_resync(PublisherState(), NOW, "count_mismatch")
    topic.publish([event])
    _, effects = run_live(ImportState(), topic)
    assert effects == [RepublishRequested("count_mismatch")]


def test_ingest_in_batches_equals_record_by_record_apply() -> None:
    """ingest over poll-sized batches gives the same state as apply per record, and never
    mutates the state it was given."""
    peers = Established()
    topic = Topic(peers.a2d)
    pub = PublisherState()
    for desired in (view(1, 2, 3), view(2, 3), view(2, 3, 4, 5), view(5)):
        pub, events = reconcile(pub, desired, NOW)
        topic.publish(events)
    expected, _ = run_live(ImportState(), topic)
    state, keyring = ImportState(), peers.a2d
    for start in range(0, len(topic.records), 3):
        before = state
        snapshot = dict(before.Instances)
        result = ingest(topic.records[start : start + 3], keyring, peers.dialer_private, NOW, state)
        assert dict(before.Instances) == snapshot
        state, keyring = result.state, result.keyring
    assert dict(state.Instances) == dict(expected.Instances) == view(5)
    assert state.LastOffset == expected.LastOffset
    assert state.LastSeq == expected.LastSeq


def test_one_change_to_a_large_state_leaves_the_previous_state_untouched() -> None:
    """Folding one change into a state with many instances (importer) or fingerprints
    (exporter) gives a new persistent map, sharing the unchanged entries with the old one,
    with the new value; the old state still holds the old value."""
    peers = Established()
    topic = Topic(peers.a2d)
    many = range(1, 2001)
    key = instance_key("web-7")
    changed = inst(7, CheckStatus.CRITICAL)
    topic.publish(
        [InstanceUpsert(Epoch=1, Seq=1, SentAt=NOW, Key=key, Instance=changed, ChangedAt=NOW)]
    )
    old = ImportState(Instances=immutables.Map(view(*many)))
    for new in (
        apply(old, 0, decode_record(peers.a2d, *topic.records[0][1:]), NOW)[0],
        ingest(topic.records, peers.a2d, peers.dialer_private, NOW, old).state,
    ):
        assert isinstance(new.Instances, immutables.Map)
        assert new.Instances[key] == changed
        assert old.Instances[key] == inst(7)
        assert len(new.Instances) == len(old.Instances) == len(many)
        other = instance_key("web-8")
        assert new.Instances[other] is old.Instances[other]

    published = immutables.Map({instance_key(f"web-{n}"): fingerprint(inst(n)) for n in many})
    pub = PublisherState(Published=published)
    after, events = publish_changes(pub, [(key, changed, NOW)], NOW)
    assert len(events) == 1
    assert isinstance(after.Published, immutables.Map)
    assert after.Published[key] == fingerprint(changed)
    assert pub.Published[key] == fingerprint(inst(7))
    assert pub.Published is published
    assert len(after.Published) == len(pub.Published) == len(many)


def test_publish_changes_coalesces_bursts_and_skips_no_ops() -> None:
    """A burst on one key sends its last value once; an unchanged instance sends nothing."""
    pub, _ = reconcile(PublisherState(), view(1), NOW)
    key1, key2 = instance_key("web-1"), instance_key("web-2")
    changes = [
        (key2, inst(2), NOW + 1),
        (key2, msgspec.structs.replace(inst(2), Port=9), NOW + 2),
        (key1, inst(1), NOW + 3),  # what was already published: no event
    ]
    after, events = publish_changes(pub, changes, NOW + 4)
    assert len(events) == 1
    assert isinstance(events[0], InstanceUpsert)
    assert events[0].Instance.Port == 9
    assert events[0].ChangedAt == NOW + 2
    assert events[0].Seq == pub.NextSeq
    removed, events = publish_changes(after, [(key2, None, NOW + 5), (key2, None, NOW + 6)], NOW)
    assert [type(e) for e in events] == [InstanceRemove]
    assert key2 not in removed.Published
    # Removing a key that was never published sends nothing.
    _, events = publish_changes(removed, [(instance_key("ghost"), None, NOW)], NOW)
    assert events == []
