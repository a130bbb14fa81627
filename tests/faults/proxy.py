"""A thread-based TCP proxy on 127.0.0.1 that can delay, drop, cut and heal traffic.

Kafka clients reconnect to the broker's *advertised* address, so a proxy in front of a broker
only sees all traffic if the broker advertises the proxy: ``proxied_broker`` starts a private
broker whose ``advertised.listeners`` names the proxy's port and points the proxy at the
broker's real port (read from the data dir's ``broker.json`` as soon as it exists).

Modes:
- ``heal()``: pass bytes through (the default);
- ``delay(seconds)``: hold every chunk for ``seconds`` before forwarding it;
- ``drop()``: blackhole: connections stay open, bytes are read and discarded;
- ``cut()``: reset every connection (RST) and reset new ones at once, until ``heal()``.

Also: SIGSTOP/SIGCONT for agents (``frozen``), a read-only data dir and a full disk (a tiny
tmpfs; needs root, else ``DiskFullUnavailable``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from agent.devbroker import BrokerLayout, DevBroker
from tests.agent_fixtures import AgentProcess, free_port
from tests.kafka_fixtures import BrokerFactory

_CHUNK = 65536
_POLL = 0.05


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    DROP = "drop"
    CUT = "cut"


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dying middlebox would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def close(self, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()

    def pump(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        try:
            while not self.closed.is_set():
                readable, _, _ = select.select(list(peers), [], [], _POLL)
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    mode, delay = self.proxy.mode, self.proxy.delay_seconds
                    if mode is Mode.DROP:
                        self.proxy.dropped_bytes += len(data)
                        continue
                    if mode is Mode.DELAY and delay > 0:
                        time.sleep(delay)
                    if self.closed.is_set():
                        return
                    peers[sock].sendall(data)
                    self.proxy.forwarded_bytes += len(data)
        except (OSError, ValueError):
            return
        finally:
            self.close()
            self.proxy._forget(self)


class TcpProxy:
    """Listen on 127.0.0.1:``port``; forward to ``target()`` (host, port) per connection."""

    def __init__(self, target: Callable[[], tuple[str, int] | None], port: int = 0) -> None:
        self._target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.mode = Mode.PASS
        self.delay_seconds = 0.0
        self.forwarded_bytes = 0
        self.dropped_bytes = 0
        self.resets = 0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- fault controls ---

    def heal(self) -> None:
        self.mode, self.delay_seconds = Mode.PASS, 0.0

    def delay(self, seconds: float) -> None:
        self.delay_seconds, self.mode = seconds, Mode.DELAY

    def drop(self) -> None:
        self.mode = Mode.DROP

    def cut(self) -> None:
        """Reset every open connection; new ones are reset too until ``heal()``."""
        self.mode = Mode.CUT
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)
            self.resets += 1

    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    # --- plumbing ---

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        self._listener.settimeout(_POLL * 4)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            target = self._target()
            if self.mode is Mode.CUT or target is None:
                _reset(client)
                self.resets += 1
                continue
            try:
                upstream = socket.create_connection(target, timeout=2.0)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=link.pump, name="tcp-proxy-link", daemon=True).start()

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=2)
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)


def _layout_port(data_dir: Path) -> Callable[[], tuple[str, int] | None]:
    """The real port of the broker on ``data_dir`` (or a retry sibling), once it exists."""

    def resolve() -> tuple[str, int] | None:
        candidates = sorted(
            data_dir.parent.glob(f"{data_dir.name}*/broker.json"),
            key=lambda p: p.stat().st_mtime,
        )
        if not candidates:
            return None
        layout = msgspec.json.decode(candidates[-1].read_bytes(), type=BrokerLayout)
        return ("127.0.0.1", layout.port)

    return resolve


@contextlib.contextmanager
def proxied_broker(
    broker_factory: BrokerFactory, base: Path, name: str = "faulty"
) -> Iterator[tuple[DevBroker, TcpProxy]]:
    """A private broker that every client reaches through a ``TcpProxy``.

    ``base`` is the test's ``tmp_path`` (the broker factory's base dir). Agents get
    ``proxy.addr`` as their ``--kafka``; the broker advertises the same address.
    """
    proxy = TcpProxy(_layout_port(base / name))
    try:
        broker = broker_factory.start(name, **{"advertised.listeners": f"PLAINTEXT://{proxy.addr}"})
        yield broker, proxy
    finally:
        proxy.close()


# --- processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(target: AgentProcess | DevBroker) -> Iterator[None]:
    """SIGSTOP an agent or a broker for the block, SIGCONT after (also on failure)."""
    if isinstance(target, DevBroker):
        target.suspend()
        try:
            yield
        finally:
            target.resume()
        return
    proc = target.proc
    assert proc is not None, "agent not running"
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


# --- disks --------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` and its files read-only for the block (root ignores mode bits,
    so this also sets the immutable-free way: a read-only bind mount when running as root)."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(directory)], check=False)
        return
    modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


class DiskFullUnavailable(Exception):
    """A tiny tmpfs cannot be mounted here (not root, or no mount permission)."""


@contextlib.contextmanager
def tiny_disk(directory: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a ``size`` tmpfs on ``directory`` for the block: fill it to simulate a full disk."""
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DiskFullUnavailable(result.stderr.strip() or "mount failed")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> int:
    """Write a filler file until the file system says ENOSPC; return the bytes written."""
    written = 0
    with (directory / "filler").open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                written += 65536
        except OSError:
            pass
    return written


__all__ = [
    "DiskFullUnavailable",
    "Mode",
    "TcpProxy",
    "fill",
    "free_port",
    "frozen",
    "proxied_broker",
    "read_only",
    "tiny_disk",
]
