"""Throughput of the pure protocol core: encode, decode + apply (live), and rebuild.

    .venv/bin/python bench/codec_throughput.py [--instances 20000]

No Kafka: this bounds what the stream loops can do per core before any I/O.
"""

from __future__ import annotations

import argparse
import time

from agent import crypto
from agent.model import HealthCheck, ServiceInstance
from agent.reducer import ImportState, PublisherState, apply, ingest, rebuild, reconcile
from agent.wire import keys
from agent.wire.envelope import decode_record, encode_event
from agent.wire.events import instance_key


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


if __name__ == "__main__":
    main()
