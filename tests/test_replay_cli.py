"""`peering replay`, `dump` and `export-keys` against two real agents on a real broker."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from agent import kafka_client, topics
from agent.devbroker import DevBroker
from agent.wire.keys import Direction
from tests.acceptance_helpers import metric, peered_pair
from tests.agent_fixtures import REPO, AgentProcess, cli_env, peering_command
from tests.peering_helpers import FAST_ENV, export, imported, register, wait_for

AgentFactory = Callable[..., AgentProcess]
Snapshot = list[tuple[str, str, str, str, int]]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        peering_command(*args),
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _ok(*args: str) -> str:
    done = _cli(*args)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _jsonl(text: str, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [line for line in lines if line["kind"] == kind]


def _live(agent: AgentProcess, peer_name: str) -> Snapshot:
    names = httpx.get(f"{agent.url}/v1/catalog/services", params={"peer": peer_name}, timeout=10)
    names.raise_for_status()
    out: Snapshot = []
    for name in names.json():
        for entry in imported(agent, name, peer_name):
            svc = entry["Service"]
            statuses = {c["Status"] for c in entry["Checks"]}
            health = next((s for s in ("critical", "warning") if s in statuses), "passing")
            out.append((svc["Service"], svc["ID"], health, svc["Address"], svc["Port"]))
    return sorted(out)


def _replayed(text: str) -> Snapshot:
    return sorted(
        (i["service"], i["id"], i["health"], i["address"], i["port"])
        for i in _jsonl(text, "instance")
    )


def _end_offset(kafka: DevBroker, topic: str) -> int:
    return anyio.run(kafka_client.end_offset, kafka.bootstrap, topic)


def _produce(kafka: DevBroker, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[int]:
    async def main() -> list[int]:
        async with kafka_client.producer(kafka.bootstrap) as client:
            return await kafka_client.send_batch(client, topic, records)

    return anyio.run(main)


def _first_record(kafka: DevBroker, topic: str) -> kafka_client.Record:
    async def main() -> kafka_client.Record:
        async for record in kafka_client.read_partition(kafka.bootstrap, topic):
            return record
        raise AssertionError("empty topic")

    return anyio.run(main)


def _groups(kafka: DevBroker) -> list[Any]:
    async def main() -> list[Any]:
        async with kafka_client.admin_client(kafka.bootstrap) as admin:
            groups: list[Any] = await admin.list_consumer_groups()
            return groups

    return anyio.run(main)


def _digest(data_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.iterdir())
        if p.is_file()
    }


def test_replay_matches_live_state_explains_dumps_and_reports_forgeries(
    kafka: DevBroker, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    """A scripted history (register, health change, deregister, key rotation, unexport,
    re-export, forged records) replays to exactly the live imported state at four cut points;
    --explain, --diff, the outbound direction, a dump replayed offline with an exported key
    file, forged rows and the read-only promise all hold."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    peering_id = httpx.get(f"{west.url}/v1/peering/east", timeout=5).json()["ID"]
    topic = topics.stream_topic(peering_id, Direction.ACCEPTOR_TO_DIALER)
    groups_before = _groups(kafka)
    data = ["--peer", "east", "--data-dir", str(west.data_dir)]
    cuts: list[tuple[int, Snapshot]] = []

    def cut(expected: int) -> None:
        """Once west shows ``expected`` instances: the end offset and the live state."""
        wait_for("imported count", lambda: len(_live(west, "east")) == expected)
        before = _live(west, "east")
        end = _end_offset(kafka, topic)
        assert _live(west, "east") == before
        cuts.append((end - 1, before))

    ttl = {"Check": {"CheckID": "", "TTL": "60s", "Status": "passing"}}
    register(east, "web-1", "web", 8080, **ttl)
    register(east, "web-2", "web", 8081, **ttl)
    register(east, "db-1", "db", 5432)
    export(east, {"web": ["west"], "db": ["west"]})
    cut(3)

    httpx.put(f"{east.url}/v1/agent/check/fail/service:web-1", timeout=5).raise_for_status()
    wait_for(
        "web-1 critical",
        lambda: ("web", "web-1", "critical") in [s[:3] for s in _live(west, "east")],
    )
    httpx.put(f"{east.url}/v1/agent/service/deregister/web-2", timeout=5).raise_for_status()
    cut(2)

    rotated = httpx.post(f"{east.url}/v1/peering/west/rotate-keys", timeout=5)
    assert rotated.status_code == 200, rotated.text
    register(east, "web-3", "web", 8083, **ttl)  # after the rotation's republish, in order
    wait_for("web-3 imported", lambda: len(imported(west, "web", "east")) == 2)
    export(east, {"db": ["west"]})
    cut(1)

    export(east, {"web": ["west"], "db": ["west"]})
    genuine = _first_record(kafka, topic)
    assert genuine.value is not None
    forged_offsets = _produce(
        kafka, topic, [(b"k" * 16, b"\x93forged"), (genuine.key, genuine.value)]
    )
    cut(3)

    # 1. The state at every cut point is exactly what west served at that moment.
    for offset, live in cuts:
        out = _ok("replay", *data, "--format", "jsonl", "--state", "--until", str(offset))
        assert _replayed(out) == live, f"cut at offset {offset}"

    # 2. The timeline: rotation seen, forged records reported as rejected and skipped.
    end = cuts[-1][0]
    timeline_text = _ok("replay", *data, "--format", "jsonl", "--until", str(end))
    rows = {r["offset"]: r for r in _jsonl(timeline_text, "event")}
    assert rows[forged_offsets[0]]["type"] == "rejected"
    assert rows[forged_offsets[0]]["reason"] == "malformed"
    assert rows[forged_offsets[1]]["reason"] == "replay"
    assert any(r["type"] == "key_rotation" for r in rows.values())
    assert max(r["epoch"] or 0 for r in rows.values()) == 2
    assert not [r for o, r in rows.items() if r["reason"] and o not in forged_offsets]
    table = _ok("replay", *data, "--until", str(end), "--service", "web")
    assert "web/web-1 10.0.0.1:8080 critical" in table
    assert "heartbeat" not in table

    # 3. --explain web tells the story of web's instances, state before and after.
    explained = _jsonl(
        _ok("replay", *data, "--format", "jsonl", "--explain", "web", "--until", str(end)),
        "explain",
    )
    story = [
        (e["row"]["instance"], (e["before"] or {}).get("health"), (e["after"] or {}).get("health"))
        for e in explained
        if e["before"] != e["after"]
    ]
    assert story[:4] == [
        ("web-1", None, "passing"),
        ("web-2", None, "passing"),
        ("web-1", "passing", "critical"),
        ("web-2", "passing", None),
    ]
    assert ("web-3", None, "passing") in story
    unexport = story.index(("web-1", "critical", None))
    assert ("web-3", "passing", None) in story[unexport - 1 : unexport + 2]
    assert story[-2:] in (
        [("web-1", None, "critical"), ("web-3", None, "passing")],
        [("web-3", None, "passing"), ("web-1", None, "critical")],
    )

    # 4. --diff against the live agent: none at the end, the deregistration at the first cut.
    same = _cli("replay", *data, "--diff", "--http-addr", west.addr)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no differences" in same.stdout
    old = _cli(
        "replay",
        *data,
        "--diff",
        "--http-addr",
        west.addr,
        "--until",
        str(cuts[0][0]),
        "--format",
        "jsonl",
    )
    assert old.returncode == 3, old.stdout + old.stderr
    assert {(d["id"], d["difference"]) for d in _jsonl(old.stdout, "difference")} == {
        ("web-1", "changed"),
        ("web-2", "missing_live"),
        ("web-3", "missing_replay"),
    }

    # 5. The exporter's own stream (direction out on east) rebuilds the same state.
    out_state = _ok(
        "replay",
        "--peer",
        "west",
        "--data-dir",
        str(east.data_dir),
        "--direction",
        "out",
        "--format",
        "jsonl",
        "--state",
        "--until",
        str(end),
    )
    assert _replayed(out_state) == cuts[-1][1]

    # 6. A dump and an exported key file replay identically with no broker and no data dir.
    keys = tmp_path / "keys.json"
    warning = _cli("export-keys", *data, "--out", str(keys))
    assert warning.returncode == 0, warning.stderr
    assert "WARNING" in warning.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    dump = tmp_path / "east.dump.jsonl"
    _ok("dump", *data, "--out", str(dump))
    header = json.loads(dump.read_text().splitlines()[0])
    assert (header["Topic"], header["PeeringID"], header["Direction"]) == (topic, peering_id, "in")
    offline = _ok(
        "replay",
        "--peer",
        "east",
        "--keys",
        str(keys),
        "--file",
        str(dump),
        "--format",
        "jsonl",
        "--until",
        str(end),
    )
    assert offline == timeline_text
    offline_state = _ok(
        "replay",
        "--peer",
        "east",
        "--keys",
        str(keys),
        "--file",
        str(dump),
        "--format",
        "jsonl",
        "--state",
        "--until",
        str(end),
    )
    assert _replayed(offline_state) == cuts[-1][1]

    # 7. Read-only: no consumer group appeared, and a stopped agent's files stay untouched.
    assert _groups(kafka) == groups_before
    west.stop()
    digest = _digest(west.data_dir)
    _ok("replay", *data, "--state", "--kafka", kafka.bootstrap)
    _ok("export-keys", *data, "--out", str(tmp_path / "again.json"))
    # A WAL reader may leave an empty -wal and a -shm index behind; the database is unchanged.
    after = _digest(west.data_dir)
    assert after["agent.db"] == digest["agent.db"]
    wal = west.data_dir / "agent.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_replay_errors_are_one_clear_line(
    kafka: DevBroker, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    """Unknown peer, missing data dir and a bad cut point fail with one line and exit 1."""
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    cases = [
        (["--peer", "nobody", "--data-dir", str(west.data_dir)], "no peering named 'nobody'"),
        (["--peer", "east", "--data-dir", str(tmp_path / "none")], "no agent state"),
        (["--peer", "east", "--until", "soon"], "neither an offset"),
    ]
    for args, message in cases:
        done = _cli("replay", *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_replay_after_a_resync_matches_live_state(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """The stream topic is recreated (records lost): the importer resyncs, the exporter
    republishes, and a replay of the topic as it is now gives exactly west's live state."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    peering_id = httpx.get(f"{west.url}/v1/peering/east", timeout=5).json()["ID"]
    topic = topics.stream_topic(peering_id, Direction.ACCEPTOR_TO_DIALER)
    ttl = {"Check": {"CheckID": "", "TTL": "60s", "Status": "passing"}}
    for n in range(3):
        register(east, f"web-{n}", "web", 8080 + n, **ttl)
    export(east, {"web": ["west"]})
    wait_for("three on west", lambda: len(_live(west, "east")) == 3)

    async def recreate() -> None:
        await kafka_client.delete_topic(kafka.bootstrap, topic)
        with anyio.fail_after(30):
            while True:
                try:
                    created = await kafka_client.create_topic(
                        kafka.bootstrap, topic, compacted=True, configs=dict(topics.STREAM_CONFIG)
                    )
                except kafka_client.KafkaError:  # the deletion is still in progress
                    created = False
                if created:
                    return
                await anyio.sleep(0.2)

    anyio.run(recreate)
    register(east, "web-3", "web", 8083, **ttl)
    httpx.put(f"{east.url}/v1/agent/check/fail/service:web-0", timeout=5).raise_for_status()

    wait_for(
        "a resync on west",
        lambda: metric(west, "peering_resyncs_total", peer="east") >= 1,
        timeout=40,
    )
    wait_for(
        "converged after the resync",
        lambda: (
            len(_live(west, "east")) == 4
            and ("web", "web-0", "critical") in [s[:3] for s in _live(west, "east")]
        ),
        timeout=40,
    )
    live = _live(west, "east")
    end = _end_offset(kafka, topic)
    data = ["--peer", "east", "--data-dir", str(west.data_dir)]
    out = _ok("replay", *data, "--format", "jsonl", "--state", "--until", str(end - 1))
    assert _replayed(out) == live
    rows = _jsonl(_ok("replay", *data, "--format", "jsonl"), "event")
    assert any(r["type"] == "stream_head" for r in rows)
