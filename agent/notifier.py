"""Waking blocking queries when a commit may have changed their answer.

The catalog index moves on every commit, whatever it touched. Waking every blocking query on
every commit made each change cost a read per open query, before the one that watches the
changed service got its turn: with 200 queries open on other services (Prometheus' Consul
service discovery holds one per service), a change took 2 ms longer to reach its watcher.
So each commit says what it may have changed (``Wake``: whose catalog, which services), and a
query subscribes to what its answer reads (``IndexNotifier.watch``). A commit that cannot
say wakes everyone, as before; a query still compares its answer before answering, so a
wake-up too many costs a read, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

A = TypeVar("A")


def on_loop(callback: Callable[[A], None]) -> Callable[[A], None]:
    """``callback`` made callable from any thread: it always runs on the current event loop
    (bulk writes commit in worker threads; anyio events are not thread-safe)."""
    token = anyio.lowlevel.current_token()
    loop_thread = threading.get_ident()

    def call(argument: A) -> None:
        if threading.get_ident() == loop_thread:
            callback(argument)
            return
        # RuntimeError: the loop has stopped, so nobody can be waiting any more.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(callback, argument, token=token)

    return call


class Wake(NamedTuple):
    """The answers a commit may have changed: those read from one catalog (``peer`` None: the
    local one; else what is imported from that peer), about ``services`` (None: any)."""

    peer: str | None
    services: frozenset[str] | None = None


LOCAL = Wake(None)
"""Anything of the local catalog: a config change, or a write that could not name its services."""


def imported(peer: str, services: Iterable[str] | None = None) -> Wake:
    """What is imported from ``peer``: those services, or all of them."""
    return Wake(peer, None if services is None else frozenset(services))


class Change(NamedTuple):
    """A commit as the notifier hears of it: the new catalog index and whom to wake
    (``wake`` None: every query, for writes that cannot say what they changed)."""

    catalog_index: int
    wake: Wake | None = None


class IndexNotifier:
    """Wakes blocking queries when the catalog index moves.

    ``bind`` runs inside the event loop; ``notify`` may then be called from any thread (bulk
    writes commit in worker threads) and hops onto the loop (``on_loop``).
    """

    def __init__(self, index: int = 0) -> None:
        self._index = index
        self._event: anyio.Event | None = None
        # peer (None: local) -> service (None: any) -> the event its queries wait on.
        self._watches: dict[str | None, dict[str | None, anyio.Event]] = {}
        self._notify_on_loop: Callable[[Change], None] = self._wake  # until bound to a loop
        self._closed = False

    @property
    def index(self) -> int:
        return self._index

    @property
    def closed(self) -> bool:
        """The agent is stopping: waiters are released and nothing will wake them again."""
        return self._closed

    def bind(self, index: int) -> None:
        """Attach to the running event loop, starting from the store's current index."""
        self._notify_on_loop = on_loop(self._wake)
        self._index = max(self._index, index)

    def notify(self, change: Change) -> None:
        """Record that the index reached ``change.catalog_index`` and wake whom it concerns."""
        self._notify_on_loop(change)

    def watch(self, peer: str | None, service: str | None) -> anyio.Event:
        """An event set by the next commit that may change answers about ``service`` (None:
        any service) of ``peer``'s imported catalog (None: the local one).

        Take it before reading: a commit between the read and the wait then still sets it.
        On the event loop only.
        """
        by_service = self._watches.setdefault(peer, {})
        event = by_service.get(service)
        if event is None:
            event = by_service[service] = anyio.Event()
        return event

    def _wake(self, change: Change) -> None:
        self._index = max(self._index, change.catalog_index)
        if self._event is not None:
            self._event.set()
            self._event = None
        wake = change.wake
        if wake is None:
            woken = [
                event for by_service in self._watches.values() for event in by_service.values()
            ]
            self._watches.clear()
        elif wake.services is None:
            woken = list(self._watches.pop(wake.peer, {}).values())
        else:
            by_service = self._watches.get(wake.peer)
            if not by_service:
                return
            woken = [
                event
                for name in (None, *wake.services)
                if (event := by_service.pop(name, None)) is not None
            ]
        for event in woken:
            event.set()

    def close(self) -> None:
        """Release every waiter now and from now on (the agent is stopping: answer, don't hang)."""
        self._closed = True
        self._wake(Change(self._index))

    async def wait_beyond(self, index: int) -> int:
        """Return once the index is greater than ``index`` (callers bound it with a timeout)."""
        while self._index <= index and not self._closed:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return self._index
