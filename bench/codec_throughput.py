"""Throughput of the pure protocol core: encode, decode + apply (live), and rebuild, then
where an event's microseconds go (each stage timed alone over the same records).

    .venv/bin/python bench/codec_throughput.py [--instances 20000]

No Kafka: this bounds what the stream loops can do per core before any I/O.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from agent import crypto
from agent.model import HealthCheck, ServiceInstance
from agent.reducer import ImportState, PublisherState, apply, ingest, rebuild, reconcile
from agent.wire import keys
from agent.wire.envelope import Envelope, decode_record, encode_event
from agent.wire.events import Event, instance_key


def per_item_us(items: Sequence[Any], step: Callable[[Any], object]) -> float:
    """Microseconds per item of ``step`` over ``items``."""
    started = time.perf_counter()
    for item in items:
        step(item)
    return (time.perf_counter() - started) * 1e6 / len(items)


def profile(
    keyring: keys.StreamKeyring, events: list[Event], records: list[tuple[int, bytes, bytes]]
) -> list[tuple[str, float]]:
    """(stage, µs per event) for the steps of encode_event and decode_record, each timed alone
    with the same libraries; the rest of each function (checks, framing) is its remainder."""
    msgpack = msgspec.msgpack.Encoder()
    event_decoder = msgspec.msgpack.Decoder(Event)
    envelope_decoder = msgspec.msgpack.Decoder(Envelope)
    aead_key = keys.aead_key(keyring, 1)
    assert aead_key is not None
    plaintexts = [msgpack.encode(event) for event in events]
    envelopes = [envelope_decoder.decode(value) for _, _, value in records]
    aad = bytes(80)  # about the size of a stream record's AAD
    sealed = [crypto.seal(aead_key, plaintext, aad) for plaintext in plaintexts]
    encode = per_item_us(events, lambda event: encode_event(keyring, event))
    decode = per_item_us(records, lambda record: decode_record(keyring, record[1], record[2]))
    # Encode computes the record key, decode computes it again to check the record's key.
    record_key = per_item_us(events, lambda event: keys.record_key(keyring, event.Key))
    stages = [
        ("encode: event to msgpack", per_item_us(events, msgpack.encode)),
        ("encode: record key (HMAC-SHA256)", record_key),
        ("encode: seal (ChaCha20-Poly1305)",
         per_item_us(plaintexts, lambda plaintext: crypto.seal(aead_key, plaintext, aad))),
        ("encode: envelope to msgpack", per_item_us(envelopes, msgpack.encode)),
    ]  # fmt: skip
    stages.append(("encode: the rest (AAD, checks)", encode - sum(us for _, us in stages)))
    decoding = [
        ("decode: envelope from msgpack",
         per_item_us(records, lambda record: envelope_decoder.decode(record[2]))),
        ("decode: open (ChaCha20-Poly1305)",
         per_item_us(sealed, lambda box: crypto.open_sealed(aead_key, box[0], box[1], aad))),
        ("decode: event from msgpack", per_item_us(plaintexts, event_decoder.decode)),
        ("decode: record key check (HMAC-SHA256)", record_key),
    ]  # fmt: skip
    decoding.append(("decode: the rest (AAD, checks)", decode - sum(us for _, us in decoding)))
    return stages + decoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=20_000)
    count = parser.parse_args().instances
    root = crypto.hkdf(b"bench", salt=b"", info=b"bench root")
    keyring = keys.new_keyring(root, "bench-peering", keys.Direction.ACCEPTOR_TO_DIALER)
    importer_private = crypto.generate_private_key()
    desired = {
        instance_key(f"web-{n}"): ServiceInstance(
            ID=f"web-{n}",
            Name="web",
            Address=f"10.0.{n // 256 % 256}.{n % 256}",
            Port=8080,
            Tags=("v1", "primary"),
            Meta={"team": "payments"},
            Checks=(HealthCheck(CheckID=f"service:web-{n}", Name="ttl"),),
        )
        for n in range(count)
    }
    _, events = reconcile(PublisherState(), desired, now=0.0)

    started = time.perf_counter()
    records = [(offset, *encode_event(keyring, event)) for offset, event in enumerate(events)]
    encoded = time.perf_counter()
    state = ImportState()
    for offset, key, value in records:
        state, _ = apply(state, offset, decode_record(keyring, key, value), now=0.0)
    live = time.perf_counter()
    batched = ImportState()
    for start in range(0, count, 500):  # consumer polls of 500 records
        batched = ingest(
            records[start : start + 500], keyring, importer_private, 0.0, batched
        ).state
    batches = time.perf_counter()
    rebuilt, _, _ = rebuild(records, keyring, importer_private, now=0.0)
    done = time.perf_counter()
    assert dict(rebuilt.Instances) == dict(state.Instances) == dict(batched.Instances) == desired

    size = sum(len(value or b"") for _, _, value in records) / len(records)
    print(f"records: {count}, mean value size {size:.0f} bytes")
    print(f"encode:          {count / (encoded - started):>10,.0f} records/s")
    print(f"decode + apply:  {count / (live - encoded):>10,.0f} records/s (live, per record)")
    print(f"ingest (500):    {count / (batches - live):>10,.0f} records/s (live, per poll)")
    print(f"rebuild:         {count / (done - batches):>10,.0f} records/s")
    print("profile, µs per event:")
    stages = profile(keyring, events, records)
    for stage, us in stages:
        print(f"  {stage:<46} {us:6.2f}")
    decode_us = sum(us for stage, us in stages if stage.startswith("decode"))
    fold_us = 1e6 / (count / (batches - live)) - decode_us
    print(f"  {'apply: fold into the state (ingest - decode)':<46} {fold_us:6.2f}")


if __name__ == "__main__":
    main()
