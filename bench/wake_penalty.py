"""How much slower small work runs right after the process slept: the machine's wake penalty.

    .venv/bin/python bench/wake_penalty.py [--samples 300] [--pause-ms 20]

Each kind of work below is timed back to back, then again after a ``--pause-ms`` sleep
before every sample (as in the latency benchmarks, which pause 20 ms before each change).
On a virtual machine whose vCPUs halt when idle, the first work after a wake-up runs with
cold caches and TLBs: on the benchmark machine syscalls and memory-heavy work ran 3-10x
slower after 20 ms than back to back, while a tight arithmetic loop did not slow down. Every
step on the propagation path runs in that state (each process sleeps between changes), which
is why its steps cost several times their warm micro-benchmarks. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def kinds(workdir: Path) -> dict[str, Callable[[], object]]:
    fd = os.open(workdir / "file", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 65536)
    db = sqlite3.connect(workdir / "db.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # the transaction's own work, without a disk flush
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(f"k{i}", b"x" * 300) for i in range(1000)])
    memory = bytearray(4 << 20)

    def arithmetic() -> object:
        return sum(i * i for i in range(2000))

    def preads() -> object:
        return [os.pread(fd, 100, 0) for _ in range(10)]

    def locks() -> object:
        for _ in range(5):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return None

    def transaction() -> object:
        db.execute("BEGIN IMMEDIATE")
        db.execute("SELECT v FROM t WHERE id = 'k5'").fetchall()
        db.execute("UPDATE t SET v = ? WHERE id = 'k5'", (os.urandom(300),))
        return db.execute("COMMIT")

    def pages() -> object:
        return sum(memory[i] for i in range(0, len(memory), 4096))

    def objects() -> object:
        return {str(i): [i] for i in range(300)}

    return {
        "arithmetic loop (2,000 steps)": arithmetic,
        "10 pread syscalls": preads,
        "5 fcntl lock + unlock": locks,
        "SQLite write transaction (no fsync)": transaction,
        "touch 1,024 memory pages": pages,
        "build a 300-entry dict": objects,
    }


def median_us(work: Callable[[], object], samples: int, pause: float) -> float:
    times = []
    for _ in range(samples):
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--pause-ms", type=float, default=20.0)
    args = parser.parse_args()
    pause = args.pause_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'work':40} {'back to back':>14} {f'after {args.pause_ms:g} ms':>14} {'x':>6}")
        for name, work in kinds(Path(tmp)).items():
            warm = median_us(work, args.samples, 0)
            cold = median_us(work, args.samples, pause)
            print(f"{name:40} {warm:11.1f} us {cold:11.1f} us {cold / warm:6.1f}")


if __name__ == "__main__":
    main()
