"""Replay core (agent.replay) on streams built offline with the wire encoder: no I/O."""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import pytest

from agent import crypto, reducer, replay, replay_io
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.replay import RawRecord, ReplayError, StreamKeys
from agent.wire.envelope import encode_event
from agent.wire.events import Event, instance_key
from agent.wire.keys import StreamKeyring
from tests.wire_helpers import NOW, Established, seeded_random

T0_MS = int(NOW * 1000)


def _inst(
    iid: str, name: str, port: int, status: CheckStatus = CheckStatus.PASSING
) -> ServiceInstance:
    check = HealthCheck(CheckID=f"service:{iid}", Name="ttl", Status=status)
    return ServiceInstance(ID=iid, Name=name, Address="10.0.0.1", Port=port, Checks=(check,))


class Stream:
    """An exporter writing the acceptor-to-dialer stream into an in-memory 'topic'."""

    def __init__(self) -> None:
        self.est = Established()
        self.keyring: StreamKeyring = self.est.a2d
        self.state = reducer.PublisherState()
        self.desired: dict[str, ServiceInstance] = {}
        self.records: list[RawRecord] = []
        self.rnd = seeded_random(7)

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            key, value = encode_event(self.keyring, event, self.rnd)
            self.append(key, value)

    def append(self, key: bytes | None, value: bytes | None) -> int:
        offset = len(self.records)
        self.records.append(RawRecord(offset, T0_MS + offset * 1000, key, value))
        return offset

    def put(self, *instances: ServiceInstance) -> None:
        for inst in instances:
            self.desired[instance_key(inst.ID)] = inst
        self.sync()

    def drop(self, *ids: str) -> None:
        for iid in ids:
            self.desired.pop(instance_key(iid), None)
        self.sync()

    def sync(self) -> None:
        self.state, events = reducer.reconcile(self.state, self.desired, NOW)
        self._emit(events)

    def heartbeat(self) -> None:
        self.state, event = reducer.heartbeat(self.state, NOW)
        self._emit([event])

    def rotate(self) -> None:
        public = crypto.public_key(self.est.dialer_private)
        state, keyring, event = reducer.rotate(self.state, self.keyring, public, NOW, self.rnd)
        self.keyring = keyring
        self._emit([event])
        self.state, events = reducer.republish_all(
            state, self.desired, NOW, "key rotation", retire_epochs_below=state.Epoch
        )
        self._emit(events)

    def importer_keys(self) -> StreamKeys:
        return StreamKeys(self.est.a2d, self.est.dialer_private)


def _history() -> tuple[Stream, dict[str, int]]:
    """register web-1/web-2/db-1, web-1 critical, deregister web-2, rotate, unexport web."""
    s = Stream()
    marks: dict[str, int] = {}
    s.put(_inst("web-1", "web", 8080), _inst("web-2", "web", 8081), _inst("db-1", "db", 5432))
    marks["registered"] = len(s.records) - 1
    s.heartbeat()
    s.put(_inst("web-1", "web", 8080, CheckStatus.CRITICAL))
    marks["critical"] = len(s.records) - 1
    s.drop("web-2")
    marks["deregistered"] = len(s.records) - 1
    s.rotate()
    marks["rotated"] = len(s.records) - 1
    s.drop("web-1")
    marks["end"] = len(s.records) - 1
    return s, marks


def _state_at(s: Stream, offset: int | None) -> list[tuple[str, str, str]]:
    point = replay.Point(offset=offset) if offset is not None else None
    steps = replay.until(replay.timeline(s.records, s.importer_keys()), point)
    return [(v.service, v.id, v.health) for v in replay.state_views(replay.final_state(steps))]


def test_timeline_rows_describe_each_event() -> None:
    """Rows carry offset, time, epoch, seq, type and a readable summary of each event."""
    s, _ = _history()
    rows = [step.row for step in replay.timeline(s.records, s.importer_keys())]
    assert [r.offset for r in rows] == list(range(len(s.records)))
    first = rows[0]
    assert (first.type, first.epoch, first.seq, first.change) == ("instance_upsert", 1, 1, "added")
    assert first.summary == "db/db-1 10.0.0.1:5432 passing"
    assert first.time == "2023-11-14T22:13:20.000Z"
    heartbeat = rows[3]
    assert (heartbeat.type, heartbeat.summary) == ("heartbeat", "LiveKeys=3")
    critical = rows[4]
    assert (critical.change, critical.summary) == ("updated", "web/web-1 10.0.0.1:8080 critical")
    removed = rows[5]
    assert (removed.type, removed.change, removed.summary) == (
        "instance_remove",
        "removed",
        "remove web/web-2",
    )
    rotation = rows[6]
    assert (rotation.type, rotation.summary, rotation.epoch) == (
        "key_rotation",
        "new epoch 2",
        1,
    )
    # Everything after the rotation decrypts with the epoch-2 key learnt from it.
    assert all(r.epoch == 2 and not r.reason for r in rows[7:])
    assert rows[-1].change == "removed"
    assert not any(r.reason for r in rows)


def test_state_at_cut_points_matches_the_exporter_at_that_time() -> None:
    """--until OFFSET rebuilds exactly the imported catalog after that record."""
    s, marks = _history()
    assert _state_at(s, marks["registered"]) == [
        ("db", "db-1", "passing"),
        ("web", "web-1", "passing"),
        ("web", "web-2", "passing"),
    ]
    assert _state_at(s, marks["critical"]) == [
        ("db", "db-1", "passing"),
        ("web", "web-1", "critical"),
        ("web", "web-2", "passing"),
    ]
    assert _state_at(s, marks["deregistered"]) == [
        ("db", "db-1", "passing"),
        ("web", "web-1", "critical"),
    ]
    assert _state_at(s, marks["rotated"]) == _state_at(s, marks["deregistered"])
    assert _state_at(s, None) == [("db", "db-1", "passing")]
    assert _state_at(s, -1) == []


def test_time_cut_points_use_the_record_timestamp() -> None:
    """--until TIME applies every record stamped at or before TIME (ISO or @unix seconds)."""
    s, marks = _history()
    at = (T0_MS + marks["critical"] * 1000) / 1000
    iso = replay.iso_time(int(at * 1000))
    for text in (iso, f"@{at:.0f}", f"{at:.3f}"):
        point = replay.parse_point(text)
        assert point.time_ms == int(at * 1000)
        steps = replay.until(replay.timeline(s.records, s.importer_keys()), point)
        assert replay.final_state(steps) == replay.final_state(
            replay.until(
                replay.timeline(s.records, s.importer_keys()),
                replay.Point(offset=marks["critical"]),
            )
        )
    assert replay.parse_point("42") == replay.Point(offset=42)
    assert replay.parse_point("2024-05-01T10:42:00") == replay.parse_point("2024-05-01T10:42:00Z")
    with pytest.raises(ReplayError, match="neither an offset"):
        replay.parse_point("yesterday")


def test_from_hides_earlier_rows_but_keeps_their_effect() -> None:
    """--from only hides rows: the state still folds the records before it."""
    s, _ = _history()
    steps = list(replay.window(replay.timeline(s.records, s.importer_keys()), replay.Point(5)))
    assert steps[0].row.offset == 5
    assert steps[0].before is not None
    assert steps[0].before.ID == "web-2"


def test_explain_shows_every_event_of_one_service_with_before_and_after() -> None:
    """--explain web lists exactly web's upserts and removes with instance before/after."""
    s, _ = _history()
    explained = list(replay.explain(replay.timeline(s.records, s.importer_keys()), "web"))
    story = [
        (
            e.row.type,
            e.row.instance,
            e.before.health if e.before else None,
            e.after.health if e.after else None,
        )
        for e in explained
    ]
    assert story == [
        ("instance_upsert", "web-1", None, "passing"),
        ("instance_upsert", "web-2", None, "passing"),
        ("instance_upsert", "web-1", "passing", "critical"),
        ("instance_remove", "web-2", "passing", None),
        # The republish after the key rotation re-sends web-1 under epoch 2: no change.
        ("instance_upsert", "web-1", "critical", "critical"),
        ("instance_remove", "web-1", "critical", None),
    ]
    assert [v.id for v in explained[2].instances_after] == ["web-1", "web-2"]
    assert explained[-1].instances_after == []


def test_forged_records_are_rejected_rows_and_the_replay_goes_on() -> None:
    """Garbage, a foreign stream's record, a tombstone and a replayed record become rejected
    rows with their reason; the state ignores them and later records still apply."""
    s = Stream()
    s.put(_inst("web-1", "web", 8080))
    genuine = s.records[0]
    s.append(b"k" * 16, b"\x93garbage")
    foreign = Established(seed=9).a2d
    event = reducer.heartbeat(reducer.PublisherState(), NOW)[1]
    s.append(*encode_event(foreign, event))
    s.append(b"k" * 16, None)
    s.append(b"short", b"x")
    s.append(genuine.key, genuine.value)
    s.put(_inst("web-2", "web", 8081))
    rows = [step.row for step in replay.timeline(s.records, s.importer_keys())]
    assert [(r.type, r.reason) for r in rows[1:6]] == [
        ("rejected", "malformed"),
        ("rejected", "wrong_stream"),
        ("rejected", "tombstone"),
        ("rejected", "bad_key_hash"),
        ("rejected", "replay"),
    ]
    assert rows[5].summary.startswith("rejected: replay (seq 1) instance_upsert: web/web-1")
    assert rows[6].change == "added"
    assert _state_at(s, None) == [("web", "web-1", "passing"), ("web", "web-2", "passing")]


def test_outbound_direction_decodes_with_the_export_keyring_alone() -> None:
    """Direction out: the exporter's keyring (every epoch) decodes its own stream, rotation
    included, without any private key."""
    s, _ = _history()
    rows = [step.row for step in replay.timeline(s.records, StreamKeys(s.keyring))]
    assert not any(r.reason for r in rows)
    merged = replay.merge_keyrings(s.est.a2d, s.keyring)
    assert sorted(merged.EpochSecrets) == [1, 2]


def test_diff_reports_missing_and_changed_instances() -> None:
    """diff names instances only on one side and the fields that differ."""
    health = [
        {
            "Service": {"ID": "web-1", "Service": "web", "Address": "10.0.0.1", "Port": 8080},
            "Checks": [{"Status": "passing"}, {"Status": "critical"}],
        },
        {
            "Service": {"ID": "web-3", "Service": "web", "Address": "10.0.0.3", "Port": 1},
            "Checks": [],
        },
    ]
    live = replay.views_from_health(health)
    assert [v.health for v in live] == ["critical", "passing"]
    mine = [replay.view(_inst("web-1", "web", 8080)), replay.view(_inst("web-2", "web", 1))]
    got = [(d.id, d.difference, d.fields) for d in replay.diff(mine, live)]
    assert got == [
        ("web-1", "changed", ("health",)),
        ("web-2", "missing_live", ()),
        ("web-3", "missing_replay", ()),
    ]
    assert replay.diff(live, live) == []


def test_dump_file_round_trips_records_and_refuses_other_files(tmp_path: Path) -> None:
    """write_dump/read_dump keep every record byte for byte; bad files get clear errors."""
    s, _ = _history()
    s.append(b"k" * 16, None)
    header = replay.DumpHeader(Topic="t", PeeringID="p", Peer="east", Direction="in")
    buffer = io.BytesIO()
    assert replay_io.write_dump(buffer, header, iter(s.records)) == len(s.records)
    path = tmp_path / "dump.jsonl"
    path.write_bytes(buffer.getvalue())
    assert replay_io.read_dump_header(path) == header
    assert list(replay_io.read_dump(path)) == s.records
    other = tmp_path / "other.json"
    other.write_bytes(
        msgspec.json.encode(
            {"Format": "x", "Topic": "t", "PeeringID": "p", "Peer": "e", "Direction": "in"}
        )
    )
    with pytest.raises(ReplayError, match="not a peering dump"):
        replay_io.read_dump_header(other)
    path.write_bytes(buffer.getvalue() + b"{broken\n")
    with pytest.raises(ReplayError, match=r"dump\.jsonl:\d+: not a dump record"):
        list(replay_io.read_dump(path))
