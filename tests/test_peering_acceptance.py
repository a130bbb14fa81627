"""Acceptance of issue 4 on real agents and real Kafka: brokers, fan-out, token refusals,
exactly-once across an importer crash, resync, key rotation, liveness."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from typing import Any

import anyio
import httpx

from agent import kafka_client, reducer, topics
from agent.devbroker import DevBroker
from agent.wire.keys import Direction
from tests.acceptance_helpers import (
    AgentFactory,
    active,
    converged,
    establish,
    metric,
    metric_by,
    peered_pair,
    peering,
    persisted_import,
    token_for,
    view,
)
from tests.agent_fixtures import AgentProcess
from tests.kafka_fixtures import BrokerFactory
from tests.peering_helpers import FAST_ENV, export, imported, peer, register, state, wait_for

TTL = {"Check": {"CheckID": "", "TTL": "60s", "Status": "passing"}}


def _put(agent: AgentProcess, path: str) -> None:
    response = httpx.put(f"{agent.url}{path}", timeout=10)
    assert response.status_code == 200, response.text


def _peer_services(agent: AgentProcess, peer_name: str) -> set[str]:
    response = httpx.get(f"{agent.url}/v1/catalog/services", params={"peer": peer_name}, timeout=10)
    response.raise_for_status()
    return set(response.json())


def _stream_topic(acceptor: AgentProcess, dialer_name: str, direction: Direction) -> str:
    return topics.stream_topic(peering(acceptor, dialer_name)["ID"], direction)


# --- 1. two brokers ----------------------------------------------------------------------


def test_two_brokers_dialer_uses_the_acceptors_kafka(
    kafka: DevBroker, broker_factory: BrokerFactory, agent_factory: AgentFactory
) -> None:
    """Dialer homed on broker B peers through acceptor broker A named in the token; full flow."""
    broker_b = broker_factory.start("home-b")
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="west", kafka=broker_b.bootstrap, env=FAST_ENV)
    peer(east, west)
    assert peering(west, "east")["PeerServerAddresses"] == [kafka.bootstrap]

    register(east, "web-1", "web", 8080, **TTL)
    register(east, "web-2", "web", 8081, **TTL)
    export(east, {"web": ["west"]})
    register(west, "api-1", "api", 9000)
    export(west, {"api": ["east"]})
    wait_for("web on west", lambda: len(imported(west, "web", "east")) == 2)
    wait_for("api on east (dialer exports over A)", lambda: len(imported(east, "api", "west")) == 1)

    _put(east, "/v1/agent/check/fail/service:web-1")
    wait_for("web-1 critical on west", lambda: view(west, "web", "east") == view(east, "web"))
    assert view(west, "web", "east")["web-1"][4] == ("critical",)

    # Every stream topic lives on A; B only holds the dialer's own bootstrap topic.
    peering_id = peering(east, "west")["ID"]
    on_a = anyio.run(kafka_client.list_topics, kafka.bootstrap)
    on_b = anyio.run(kafka_client.list_topics, broker_b.bootstrap)
    assert {topics.stream_topic(peering_id, d) for d in Direction} <= set(on_a)
    assert not [t for t in on_b if t.startswith(topics.STREAM_PREFIX)]

    deleted = httpx.delete(f"{west.url}/v1/peering/east", timeout=5)
    assert deleted.status_code == 200, deleted.text
    wait_for("east TERMINATED", lambda: state(east, "west") == "TERMINATED")
    assert imported(west, "web", "east") == []
    wait_for("api gone on east", lambda: imported(east, "api", "west") == [])


# --- 2. three clusters -------------------------------------------------------------------


def test_three_clusters_each_sees_exactly_its_own(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """A exports different sets to B and C; each peer sees exactly its own set, nothing else."""
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    north = agent_factory(name="north", kafka=kafka.bootstrap, env=FAST_ENV)
    peer(east, west)
    peer(east, north)
    for port, name in enumerate(("web", "db", "cache", "secret")):
        register(east, f"{name}-1", name, 7000 + port)
    export(east, {"web": ["west"], "db": ["north"], "cache": ["west", "north"]})

    wait_for("west's set", lambda: _peer_services(west, "east") == {"web", "cache"})
    wait_for("north's set", lambda: _peer_services(north, "east") == {"db", "cache"})
    assert imported(west, "db", "east") == []
    assert imported(north, "web", "east") == []
    assert imported(west, "secret", "east") == imported(north, "secret", "east") == []
    assert peering(west, "east")["StreamStatus"]["ImportedServices"] == ["cache", "web"]
    assert peering(north, "east")["StreamStatus"]["ImportedServices"] == ["cache", "db"]
    assert peering(east, "west")["StreamStatus"]["ExportedServices"] == ["cache", "web"]
    assert peering(east, "north")["StreamStatus"]["ExportedServices"] == ["cache", "db"]
    # Changing one consumer's set leaves the other untouched.
    export(east, {"web": ["west", "north"], "cache": ["west"]})
    wait_for("north's new set", lambda: _peer_services(north, "east") == {"web"})
    wait_for("west's set kept", lambda: _peer_services(west, "east") == {"web", "cache"})


# --- 3. token refusals -------------------------------------------------------------------


def _acceptor_results(acceptor: AgentProcess) -> dict[str, float]:
    """Acceptor-side handshake results, without requests left on the shared bootstrap topic
    by earlier tests' agents of the same cluster name (those count as unknown_peering)."""
    results = metric_by(acceptor, "peering_handshakes_total", "result", role="acceptor")
    return {k: v for k, v in results.items() if k != "unknown_peering" and v}


def test_token_refusals_over_the_real_handshake(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Reused, revoked, expired, malformed and wrong-name tokens: own message, status, metric."""
    env_short_ttl = {**FAST_ENV, "PEERING_TOKEN_TTL": "1"}
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    north = agent_factory(name="north", kafka=kafka.bootstrap, env=env_short_ttl)

    used = token_for(east, "west")
    assert establish(west, "east", used).status_code == 200
    # Reused: another agent presents the token west already used.
    reused = establish(north, "east", used)
    assert reused.status_code == 403, reused.text
    assert "already used" in reused.text, reused.text
    assert active(east, "west")
    assert state(north, "east") is None

    # Revoked: a newer token for the same peer name replaces the first.
    first = token_for(east, "south")
    token_for(east, "south")
    revoked = establish(north, "east", first)
    assert revoked.status_code == 403, revoked.text
    assert "revoked" in revoked.text, revoked.text

    # Wrong name: a token generated for "west2" presented by the cluster "north".
    wrong = establish(north, "east", token_for(east, "west2"))
    assert wrong.status_code == 403, wrong.text
    assert "different cluster name" in wrong.text, wrong.text

    # Expired: north (token TTL 1 s) issues a token; west presents it after expiry.
    stale = token_for(north, "west")
    time.sleep(1.2)  # the TTL itself is what is under test
    expired = establish(west, "north", stale)
    assert expired.status_code == 400, expired.text
    assert "expired" in expired.text, expired.text

    # Malformed: garbage and a truncated token fail before any Kafka traffic.
    requests_before = sum(_acceptor_results(east).values())
    garbage = establish(north, "east", "not-a-token")
    truncated = establish(north, "east", used[: len(used) // 2])
    for response in (garbage, truncated):
        assert response.status_code == 400
        assert "invalid peering token" in response.text
    assert "starts with 'pat1.'" in garbage.text, garbage.text
    assert "two dot-separated parts" in truncated.text, truncated.text
    # A token cut short inside its payload fails its checksum: still malformed, not refused.
    body, _, checksum = used.rpartition(".")
    edited = establish(north, "east", body[:-4] + "." + checksum)
    assert edited.status_code == 400, edited.text
    assert "invalid peering token" in edited.text, edited.text

    dialer_north = metric_by(north, "peering_handshakes_total", "result", role="dialer")
    assert dialer_north == {"reused": 1, "revoked": 1, "wrong_name": 1, "malformed": 3}
    dialer_west = metric_by(west, "peering_handshakes_total", "result", role="dialer")
    assert dialer_west == {"accepted": 1, "expired": 1}
    acceptor_east = _acceptor_results(east)
    assert acceptor_east == {"accepted": 1, "reused": 1, "revoked": 1, "wrong_name": 1}
    assert sum(acceptor_east.values()) == requests_before
    # Nothing was left behind by the refusals; the real peering is untouched.
    left = httpx.get(f"{north.url}/v1/peerings", timeout=5).json()
    assert [(p["Name"], p["State"]) for p in left] == [("west", "PENDING")]  # its own token
    assert active(east, "west")
    assert active(west, "east")


# --- 5. exactly once across an importer crash ----------------------------------------------


def _churn(exporter: AgentProcess, ops: int, progress: list[int], seed: int) -> None:
    """Register/deregister/health flips on service ``pay``, ``ops`` times (bounded)."""
    rng = random.Random(seed)
    for i in range(ops):
        instance = f"pay-{rng.randrange(8)}"
        roll = rng.random()
        if roll < 0.45:
            register(
                exporter,
                instance,
                "pay",
                9000 + rng.randrange(100),
                Tags=[f"v{i}"],
                Meta={"op": str(i)},
                **TTL,
            )
        elif roll < 0.6:
            httpx.put(f"{exporter.url}/v1/agent/service/deregister/{instance}", timeout=10)
        else:
            verb = rng.choice(("pass", "warn", "fail"))
            # 404 when the instance is not registered right now: fine for churn.
            httpx.put(f"{exporter.url}/v1/agent/check/{verb}/service:{instance}", timeout=10)
        progress[0] = i + 1


def _instance_events_in_topic(
    bootstrap: str, topic: str, persisted: Any
) -> tuple[Counter[str], Counter[str], list[int]]:
    """Decode the whole stream with the importer's committed keyring and fold it from the
    importer's committed state: (events applied beyond the commit point, instance events in
    the topic, every Seq in offset order)."""

    async def read() -> list[kafka_client.Record]:
        return [r async for r in kafka_client.read_partition(bootstrap, topic)]

    records = anyio.run(read)
    beyond: Counter[str] = Counter()
    in_topic: Counter[str] = Counter()
    seqs: list[int] = []
    steps = reducer.replay(
        [(r.offset, r.key, r.value) for r in records],
        persisted.keyring,
        persisted.record.PrivateKey,
        time.time(),
        state=persisted.state,
        mode=reducer.ImportMode.LIVE,
    )
    for step, _keyring in steps:
        decoded = step.decoded
        if not isinstance(decoded, reducer.Reject | reducer.UnknownEvent):
            seqs.append(decoded.Seq)
            kind = type(decoded).__struct_config__.tag
            if kind in ("instance_upsert", "instance_remove"):
                in_topic[str(kind)] += 1
        for effect in step.effects:
            assert not isinstance(effect, reducer.ResyncRequired), effect
            if isinstance(effect, reducer.Upserted):
                beyond["instance_upsert"] += 1
            elif isinstance(effect, reducer.Removed):
                beyond["instance_remove"] += 1
    return beyond, in_topic, seqs


def test_exactly_once_across_importer_sigkill(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """SIGKILL the importer mid-churn: it converges, and every event is applied exactly once.

    Argument (counters and offsets, no sleeps):
    1. The exporter never restarts, so its ``peering_events_published_total`` for instance
       events is complete; it equals the instance events found in the stream topic, and the
       Seqs in the topic are strictly increasing: each change exists once on the wire.
    2. After the SIGKILL the importer's committed cursor (LastOffset L, LastSeq, keyring and
       imported instances, one SQLite transaction) is read from its data dir. Everything at
       offsets <= L was applied in the first life and is in that committed state.
    3. Folding the topic with the pure reducer from that committed state gives E, the instance
       events that must be applied after the restart. The restarted importer's (fresh)
       ``peering_events_applied_total`` must equal E exactly, with no replay rejects and no
       resyncs: more would be a double apply, fewer a loss. Since the counter is scraped
       before the topic is read, applied <= E holds at every poll; equality at quiescence.
    4. The final imported view (instances, health, tags, meta) equals the exporter's.
    """
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    for n in range(8):
        register(east, f"pay-{n}", "pay", 9000 + n, **TTL)
    export(east, {"pay": ["west"]})
    wait_for("initial pay on west", lambda: converged(east, west, "pay"))
    topic = _stream_topic(east, "west", Direction.ACCEPTOR_TO_DIALER)

    progress = [0]
    churn = threading.Thread(target=_churn, args=(east, 240, progress, 11), daemon=True)
    churn.start()
    wait_for("churn under way", lambda: progress[0] >= 60, timeout=60)
    west.kill()
    persisted = persisted_import(west, "east")
    wait_for("churn while the importer is down", lambda: progress[0] >= 150, timeout=60)
    west.restart()
    churn.join(timeout=120)
    assert not churn.is_alive()

    wait_for("importer converged", lambda: converged(east, west, "pay"), timeout=60)

    def accounted() -> bool:
        applied = metric_by(west, "peering_events_applied_total", "type", peer="east")
        published = metric_by(east, "peering_events_published_total", "type", peer="west")
        beyond, in_topic, seqs = _instance_events_in_topic(kafka.bootstrap, topic, persisted)
        assert seqs == sorted(set(seqs)), "a Seq appears twice or out of order on the wire"
        for kind in ("instance_upsert", "instance_remove"):
            assert applied.get(kind, 0) <= beyond[kind], (kind, applied, beyond)
        return all(
            applied.get(k, 0) == beyond[k] and published.get(k, 0) == in_topic[k]
            for k in ("instance_upsert", "instance_remove")
        )

    wait_for("exact accounting of applied events", accounted, timeout=30, interval=0.5)
    assert metric(west, "peering_records_rejected_total", peer="east") == 0
    assert metric(west, "peering_resyncs_total", peer="east") == 0
    # The crash really fell mid-stream: events were applied in both lives.
    assert persisted.state.LastSeq > 0
    assert persisted.state.Instances
    assert metric(west, "peering_events_applied_total", peer="east", type="instance_upsert") > 0
    assert converged(east, west, "pay")


def test_resync_after_stream_topic_recreated(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """Stream topic deleted and recreated: exporter republishes, importer rebuilds, converges."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    for n in range(5):
        register(east, f"inv-{n}", "inv", 9100 + n, Tags=[f"t{n}"], **TTL)
    export(east, {"inv": ["west"]})
    wait_for("initial inv on west", lambda: converged(east, west, "inv"))
    topic = _stream_topic(east, "west", Direction.ACCEPTOR_TO_DIALER)

    async def recreate() -> None:
        await kafka_client.delete_topic(kafka.bootstrap, topic)
        for _ in range(100):
            if topic not in await kafka_client.list_topics(kafka.bootstrap):
                break
            await anyio.sleep(0.1)
        with anyio.fail_after(20):
            while True:
                try:
                    await kafka_client.create_topic(
                        kafka.bootstrap, topic, compacted=True, configs=dict(topics.STREAM_CONFIG)
                    )
                    return
                except kafka_client.KafkaError:  # deletion still in progress
                    await anyio.sleep(0.2)

    anyio.run(recreate)
    register(east, "inv-new", "inv", 9200, **TTL)
    _put(east, "/v1/agent/check/fail/service:inv-0")
    wait_for("west resynced", lambda: metric(west, "peering_resyncs_total", peer="east") >= 1)
    wait_for("converged after resync", lambda: converged(east, west, "inv"), timeout=40)
    assert len(view(west, "inv", "east")) == 6
    assert active(west, "east") or state(west, "east") == "FAILING"
    wait_for("ACTIVE after resync", lambda: active(west, "east"))


# --- 6. key rotation ---------------------------------------------------------------------


def test_key_rotation_while_changes_flow(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """rotate-keys during churn: importer converges, rotations counted, nothing rejected."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    for n in range(8):
        register(east, f"pay-{n}", "pay", 9000 + n, **TTL)
    export(east, {"pay": ["west"]})
    wait_for("initial pay on west", lambda: converged(east, west, "pay"))

    progress = [0]
    churn = threading.Thread(target=_churn, args=(east, 120, progress, 5), daemon=True)
    churn.start()
    wait_for("churn under way", lambda: progress[0] >= 30, timeout=60)
    for _ in range(2):
        rotated = httpx.post(f"{east.url}/v1/peering/west/rotate-keys", timeout=10)
        assert rotated.status_code == 200, rotated.text
        wait_for("churn goes on", lambda p=progress[0]: progress[0] >= p + 20, timeout=60)
    churn.join(timeout=120)
    assert not churn.is_alive()

    wait_for(
        "two rotations",
        lambda: metric(east, "peering_key_rotations_total", peer="west") == 2,
    )
    wait_for("converged after rotations", lambda: converged(east, west, "pay"), timeout=40)
    assert metric(west, "peering_records_rejected_total", peer="east") == 0
    assert metric(west, "peering_resyncs_total", peer="east") == 0
    assert active(east, "west")
    assert active(west, "east")
    # The stream keeps working under the newest epoch.
    register(east, "pay-late", "pay", 9999, **TTL)
    wait_for("late change", lambda: converged(east, west, "pay"))


# --- 7. FAILING and back -----------------------------------------------------------------


def test_failing_when_exporter_dies_and_back_by_itself(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Exporter killed: importer FAILING with stale imports still served; restart: ACTIVE."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "web-1", "web", 8080, **TTL)
    export(east, {"web": ["west"]})
    wait_for("web on west", lambda: converged(east, west, "web"))
    served = view(west, "web", "east")
    assert peering(west, "east")["ImportsStale"] is False

    east.kill()
    killed_at = time.monotonic()
    wait_for("west FAILING", lambda: state(west, "east") == "FAILING", timeout=10)
    # 3 heartbeat intervals of 0.2 s, plus the ticker period: well under a few seconds.
    assert time.monotonic() - killed_at < 5
    status = peering(west, "east")
    assert status["ImportsStale"] is True
    assert view(west, "web", "east") == served, "imported services stay served while FAILING"
    # The gauge follows the state machine's tick (the API already shows the overdue state).
    wait_for(
        "FAILING gauge",
        lambda: metric(west, "peering_state", peer="east", state="FAILING") == 1,
        timeout=5,
    )

    east.restart()
    wait_for("west ACTIVE again", lambda: active(west, "east"), timeout=30)
    wait_for("east ACTIVE again", lambda: active(east, "west"), timeout=30)
    assert peering(west, "east")["ImportsStale"] is False
    register(east, "web-2", "web", 8081, **TTL)
    wait_for("changes flow again", lambda: len(view(west, "web", "east")) == 2)


# --- 8. An exporter restored from an older backup -------------------------------------------


def test_exporter_restored_from_an_older_backup_catches_up_with_its_topic(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """East's data dir restored from a backup older than its stream: east continues after
    the Seqs its topic already carries and brings west back to the restored view. Before,
    west dropped everything east sent as replays (and went FAILING: heartbeats too) until
    east's Seqs passed the old ones, and kept values and keys east no longer had."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    register(east, "web-1", "web", 8080)
    export(east, {"web": ["west"]})
    wait_for("web on west", lambda: converged(east, west, "web"))
    east.stop()
    backup = east.workdir / "backup"
    shutil.copytree(east.data_dir, backup)

    east.restart()
    for port in range(8081, 8091):
        register(east, "web-1", "web", port)
    register(east, "web-2", "web", 9090)
    wait_for("the newer view on west", lambda: len(view(west, "web", "east")) == 2)
    wait_for("west has it all", lambda: converged(east, west, "web"))
    east.stop()
    shutil.rmtree(east.data_dir)
    shutil.copytree(backup, east.data_dir)

    east.restart()
    register(east, "web-3", "web", 7070)
    wait_for("west back to the restored view", lambda: converged(east, west, "web"), timeout=30)
    assert sorted(view(west, "web", "east")) == ["web-1", "web-3"]
    assert view(west, "web", "east")["web-1"] == view(east, "web")["web-1"]
    wait_for("west ACTIVE", lambda: state(west, "east") == "ACTIVE", timeout=10)
    assert metric(west, "peering_records_rejected_total", peer="east", reason="replay") == 0
    assert "the stream topic is ahead of this agent's state" in east.log()
