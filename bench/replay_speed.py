"""Replay speed (records/s) and peak memory over a 100k-record stream, with no broker.

    .venv/bin/python bench/replay_speed.py [--records 100000] [--instances 1000]

Builds a stream offline with the wire encoder (upserts, health flips, removes, heartbeats,
one key rotation half-way), writes it as a `peering dump` file plus a key file, then runs:

1. the replay core in-process (agent.replay.timeline over agent.replay_io.read_dump);
2. the real CLI as a subprocess, `peering replay --file ... --keys ...`, in three modes
   (timeline as jsonl, timeline as table, --state), each with its own peak RSS (wait4).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from agent import crypto, reducer, replay, replay_io
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.wire import keys
from agent.wire.envelope import encode_event
from agent.wire.events import Event, instance_key

REPO = Path(__file__).resolve().parent.parent
PEERING_ID = "bench-peering"


def _instance(n: int, status: CheckStatus) -> ServiceInstance:
    return ServiceInstance(
        ID=f"web-{n}",
        Name=f"svc-{n % 50}",
        Address=f"10.0.{n // 256 % 256}.{n % 256}",
        Port=8080,
        Tags=("v1", "primary"),
        Meta={"team": "payments"},
        Checks=(HealthCheck(CheckID=f"service:web-{n}", Name="ttl", Status=status),),
    )


def build(path: Path, keys_path: Path, records: int, instances: int) -> None:
    rng = random.Random(1)
    root = crypto.hkdf(b"bench", salt=b"", info=b"bench root")
    initial = keys.new_keyring(root, PEERING_ID, keys.Direction.ACCEPTOR_TO_DIALER)
    keyring = initial
    importer_private = crypto.generate_private_key()
    state = reducer.PublisherState()
    desired: dict[str, ServiceInstance] = {}
    written = 0
    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        header = replay.DumpHeader(
            Topic="bench", PeeringID=PEERING_ID, Peer="east", Direction="in", EndOffset=records
        )
        out.write(encoder.encode(header) + b"\n")

        def emit(events: list[Event]) -> None:
            nonlocal written
            for event in events:
                if written >= records:
                    return
                key, value = encode_event(keyring, event)
                raw = replay.RawRecord(written, 1_700_000_000_000 + written, key, value)
                out.write(encoder.encode(raw) + b"\n")
                written += 1

        while written < records:
            if written == records // 2 and state.Epoch == 1:
                public = crypto.public_key(importer_private)
                new_state, keyring, rotation = reducer.rotate(state, keyring, public, 0.0)
                emit([rotation])
                state, events = reducer.republish_all(new_state, desired, 0.0, "rotation")
                emit(events)
                continue
            roll = rng.random()
            if roll < 0.02:
                state, heartbeat = reducer.heartbeat(state, 0.0)
                emit([heartbeat])
                continue
            n = rng.randrange(instances)
            key = instance_key(f"web-{n}")
            if roll < 0.1 and key in desired:
                changes = [(key, None, 0.0)]
            else:
                status = CheckStatus.CRITICAL if rng.random() < 0.3 else CheckStatus.PASSING
                changes = [(key, _instance(n, status), 0.0)]
            for k, inst, _ in changes:
                if inst is None:
                    desired.pop(k, None)
                else:
                    desired[k] = inst
            state, events = reducer.publish_changes(state, changes, 0.0)
            emit(events)
    key_file = replay.KeyFile(
        PeeringID=PEERING_ID,
        Peer="east",
        ImportTopic="bench",
        ExportTopic="bench-out",
        ImportKeyring=initial,
        ExportKeyring=keyring,
        PrivateKey=importer_private,
    )
    replay_io.write_secret_file(keys_path, msgspec.json.encode(key_file))


def in_process(path: Path, keys_path: Path) -> tuple[float, int, int]:
    key_file = replay_io.read_key_file(keys_path)
    stream = replay.StreamKeys(key_file.ImportKeyring, key_file.PrivateKey)
    start = time.perf_counter()
    count = rejected = 0
    state = None
    for step in replay.timeline(replay_io.read_dump(path), stream):
        count += 1
        rejected += bool(step.row.reason)
        state = step.state
    elapsed = time.perf_counter() - start
    assert state is not None
    return count / elapsed, rejected, len(state.Instances)


def cli(path: Path, keys_path: Path, *extra: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `peering replay` subprocess, stdout discarded."""
    argv = [sys.executable, "-c", "from agent.cli import main; main()", "replay"]
    argv += ["--peer", "east", "--keys", str(keys_path), "--file", str(path), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"replay failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump, keys_path = Path(tmp) / "stream.dump.jsonl", Path(tmp) / "keys.json"
        start = time.perf_counter()
        build(dump, keys_path, args.records, args.instances)
        size = dump.stat().st_size / 2**20
        print(
            f"built {args.records:,} records over {args.instances:,} instances"
            f" ({size:.1f} MiB dump) in {time.perf_counter() - start:.1f}s"
        )
        rate, rejected, live = in_process(dump, keys_path)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"core (timeline over read_dump): {rate:,.0f} records/s,"
            f" {rejected} rejected, {live} live instances; bench process peak RSS {rss:.0f} MiB"
        )
        for label, extra in (
            ("cli timeline --format jsonl", ("--format", "jsonl")),
            ("cli timeline --format table", ("--format", "table")),
            ("cli --state", ("--state", "--format", "jsonl")),
        ):
            elapsed, peak = cli(dump, keys_path, *extra)
            print(
                f"{label}: {args.records / elapsed:,.0f} records/s"
                f" ({elapsed:.2f}s incl. startup), peak RSS {peak:.0f} MiB"
            )


if __name__ == "__main__":
    main()
