"""One agent per data dir: an advisory lock on ``agent.lock`` for the agent's lifetime.

Two agents started on the same data dir (a copied unit file, a typo in a config) would
both publish the same streams with the same Seqs, overwrite each other's cursors and answer
with each other's catalog: the peers would drop half the records as replays. The second one
is refused at start instead. The lock is ``flock``: the kernel drops it when the process
ends, however it ends, so a crashed agent never leaves its data dir locked. Read-only tools
(``peering replay``, ``peering dump``) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "agent.lock"


class DataDirInUse(Exception):
    """Another agent holds this data dir."""


@contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for this process until the block ends; DataDirInUse if another
    process holds it. The lock file keeps the holder's pid, for the error message."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise DataDirInUse(
                f"data dir {data_dir} is in use by another agent (pid {holder});"
                " each agent needs its own data dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
