"""A client with full rights on the broker attacks a live peering: it learns nothing from the
records and its forged, altered and replayed records change nothing (promise 3)."""

from __future__ import annotations

import os

import anyio
import httpx
import msgspec

from agent import kafka_client, topics
from agent.devbroker import DevBroker
from agent.wire.envelope import Envelope
from agent.wire.keys import Direction
from tests.acceptance_helpers import (
    AgentFactory,
    active,
    establish,
    metric,
    metric_by,
    peered_pair,
    peering,
    token_for,
    view,
)
from tests.peering_helpers import FAST_ENV, export, register, wait_for

# Distinctive plaintext that must never show up on the broker.
SECRETS = {
    "service": "zanzibar-ledger",
    "id": "quokka-instance-7",
    "address": "10.213.77.91",
    "tag": "tag-platypus-axolotl",
    "meta_key": "meta-key-narwhal",
    "meta_value": "meta-value-pangolin",
}


async def _dump(bootstrap: str) -> dict[str, list[kafka_client.Record]]:
    """Every record of every (non-internal, single-partition) topic on the broker."""
    out: dict[str, list[kafka_client.Record]] = {}
    for topic in await kafka_client.list_topics(bootstrap):
        if topic.startswith("__"):
            continue
        out[topic] = [r async for r in kafka_client.read_partition(bootstrap, topic)]
    return out


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]):
    async with kafka_client.producer(bootstrap) as producer:
        for key, value in records:
            # value None is a tombstone; aiokafka's own send accepts it.
            await producer.send_and_wait(topic, value=value, key=key)


def _flip(data: bytes, index: int) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


def test_broker_adversary_learns_nothing_and_changes_nothing(
    kafka: DevBroker, agent_factory: AgentFactory
) -> None:
    """Read all topics (no plaintext); inject forged/altered/replayed records: all rejected."""
    east, west = peered_pair(agent_factory, kafka.bootstrap)
    service = SECRETS["service"]
    register(
        east,
        SECRETS["id"],
        service,
        7443,
        Address=SECRETS["address"],
        Tags=[SECRETS["tag"]],
        Meta={SECRETS["meta_key"]: SECRETS["meta_value"]},
        Check={"CheckID": "", "TTL": "60s", "Status": "passing"},
    )
    export(east, {service: ["west"]})
    wait_for("service on west", lambda: view(west, service, "east") == view(east, service))
    before = view(west, service, "east")
    assert before, "the import is there to be protected"
    # Let some heartbeats pass so the stream holds more than the upsert.
    wait_for(
        "heartbeats", lambda: metric(west, "peering_events_applied_total", type="heartbeat") > 2
    )

    # 1. Confidentiality: no distinctive string anywhere in topic names, keys or values.
    dump = anyio.run(_dump, kafka.bootstrap)
    stream = topics.stream_topic(peering(east, "west")["ID"], Direction.ACCEPTOR_TO_DIALER)
    bootstrap_topic = topics.bootstrap_topic("east")
    assert dump[stream], "the stream has records"
    assert dump[bootstrap_topic], "the handshake went over the bootstrap topic"
    for topic, records in dump.items():
        for secret in SECRETS.values():
            assert secret not in topic
            for record in records:
                for blob in (record.key or b"", record.value or b""):
                    assert secret.encode() not in blob, (topic, record.offset, secret)

    # 2. Integrity: forged, modified and replayed records on the stream topic.
    real = [r for r in dump[stream] if r.key is not None and r.value is not None]
    sample = real[-1]
    assert sample.key is not None
    assert sample.value is not None
    envelope = msgspec.msgpack.decode(sample.value, type=Envelope)

    def forged_envelope(**changes: object) -> bytes:
        fake = msgspec.structs.replace(
            envelope, Nonce=os.urandom(12), Ciphertext=os.urandom(len(envelope.Ciphertext))
        )
        return msgspec.msgpack.encode(msgspec.structs.replace(fake, **changes))

    injected: list[tuple[bytes | None, bytes | None]] = [
        (os.urandom(16), os.urandom(200)),  # random bytes
        (sample.key, forged_envelope()),  # valid-looking envelope, random ciphertext
        (os.urandom(16), forged_envelope()),  # ... under a random key
        (sample.key, forged_envelope(Epoch=envelope.Epoch + 7)),  # an epoch never announced
        (sample.key, forged_envelope(Stream=os.urandom(8))),  # another stream's tag
        (b"short", sample.value),  # real value under a key of the wrong length
        (sample.key, _flip(sample.value, len(sample.value) - 1)),  # bit flip in the AEAD tag
        (_flip(sample.key, 0), sample.value),  # bit flip in the key (bound by the AAD)
        (sample.key, None),  # tombstone: would let compaction drop the instance
    ]
    replayed: list[tuple[bytes | None, bytes | None]] = [(r.key, r.value) for r in real]
    expected = {
        "malformed": 1,
        "decrypt_failed": 4,
        "unknown_epoch": 1,
        "wrong_stream": 1,
        "bad_key_hash": 1,
        "tombstone": 1,
        "replay": len(replayed),
    }
    rejected_before = metric_by(west, "peering_records_rejected_total", "reason", peer="east")
    anyio.run(_produce, kafka.bootstrap, stream, injected + replayed)
    # Junk on the acceptor's bootstrap topic: random bytes, JSON of no known type, a request
    # for the real peering with a garbage ciphertext, and the real request replayed.
    invalid_before = metric(east, "peering_handshakes_total", role="acceptor", result="invalid")
    real_requests = [
        (r.key, r.value) for r in dump[bootstrap_topic] if b"handshake_request" in (r.value or b"")
    ]
    assert real_requests, "the dialer's request is on the bootstrap topic"
    junk: list[tuple[bytes | None, bytes | None]] = [
        (None, os.urandom(64)),
        (None, b'{"Type": "surprise", "Version": 1}'),
    ]
    anyio.run(_produce, kafka.bootstrap, bootstrap_topic, junk + real_requests)

    def rejects_counted() -> bool:
        now = metric_by(west, "peering_records_rejected_total", "reason", peer="east")
        grown = {k: now.get(k, 0) - rejected_before.get(k, 0) for k in now}
        return {k: v for k, v in grown.items() if v} == expected

    wait_for("every injected record rejected with its reason", rejects_counted, timeout=20)
    wait_for(
        "bootstrap junk counted",
        lambda: (
            metric(east, "peering_handshakes_total", role="acceptor", result="invalid")
            >= invalid_before + len(junk)
        ),
    )
    # The replayed request is answered as before but counted as a duplicate, not a peering.
    # (The shared bootstrap topic also holds earlier tests' requests: unknown_peering here.)
    wait_for(
        "replayed request counted as a duplicate",
        lambda: metric(east, "peering_handshakes_total", role="acceptor", result="duplicate") >= 1,
    )
    assert metric(east, "peering_handshakes_total", role="acceptor", result="accepted") == 1
    assert view(west, service, "east") == before, "the imported catalog did not change"
    assert active(west, "east")
    assert active(east, "west")
    assert metric(west, "peering_resyncs_total", peer="east") == 0
    # The stream still carries real changes after the attack.
    httpx.put(f"{east.url}/v1/agent/check/fail/service:{SECRETS['id']}", timeout=5)
    wait_for(
        "real change after the attack", lambda: view(west, service, "east") == view(east, service)
    )
    assert view(west, service, "east")[SECRETS["id"]][4] == ("critical",)


def test_token_refused_the_second_time(kafka: DevBroker, agent_factory: AgentFactory) -> None:
    """A used token presented again (by another agent) is refused as reused; nothing changes."""
    east = agent_factory(name="east", kafka=kafka.bootstrap, env=FAST_ENV)
    west = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    thief = agent_factory(name="west", kafka=kafka.bootstrap, env=FAST_ENV)
    token = token_for(east, "west")
    first = establish(west, "east", token)
    assert first.status_code == 200, first.text
    peering_id = peering(east, "west")["ID"]
    second = establish(thief, "east", token)
    assert second.status_code == 403, second.text
    assert "already used" in second.text
    assert metric(east, "peering_handshakes_total", role="acceptor", result="reused") == 1
    assert peering(east, "west")["ID"] == peering_id
    wait_for("east ACTIVE", lambda: active(east, "west"))
    assert active(west, "east")
