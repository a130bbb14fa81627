"""Waking blocking queries when a commit may have changed their answer.

The catalog index moves on every commit, whatever it touched. Waking every blocking query on
every commit made each change cost a read per open query, before the one that watches the
changed service got its turn: with 200 queries open on other services (Prometheus' Consul
service discovery holds one per service), a change took 2 ms longer to reach its watcher.
So each commit says what it may have changed (``Wake``: whose catalog, which services), and a
query subscribes to what its answer reads (``IndexNotifier.watch``). A commit that cannot
say wakes everyone, as before; a query still compares its answer before answering, so a
wake-up too many costs a read, never a wrong answer.

The same knowledge gives each answer its own ``X-Consul-Index`` (``AnswerIndexes``): the
index of the last commit that may have changed it, as Consul's per-service indexes do. With
the catalog's index instead, a watcher whose next request arrived after a commit on any
other service was behind and answered at once; when commits elsewhere came faster than a
watcher's round trip, every watcher of every service spun without waiting (hashicorp/consul
#3890 is the same trap).
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


# Services remembered per catalog before that catalog's entries are folded into one index
# (every watcher of it then answers once more): bounds the memory of a catalog whose service
# names keep changing.
MAX_TRACKED_SERVICES = 100_000


class AnswerIndexes:
    """The index of the last commit that may have changed each answer: whose catalog (``peer``
    None: the local one), which service (None: any of that catalog).

    Pure bookkeeping, fed the same ``Change`` that wakes the queries, so an answer's index
    moves exactly when its queries are woken. It starts at the index the agent started from
    (nothing before it is remembered: every answer is as new as that), never goes back and is
    at least 1 (Consul's rule: a client must never be handed index 0 to wait on).
    """

    def __init__(self, start: int = 0, max_tracked: int = MAX_TRACKED_SERVICES) -> None:
        self._everything = start  # the last commit that could not say what it changed
        self._any_service: dict[str | None, int] = {}  # the last commit in each catalog
        self._whole_catalog: dict[str | None, int] = {}  # ... that changed all of it
        self._by_service: dict[str | None, dict[str, int]] = {}
        self._max_tracked = max_tracked

    def of(self, peer: str | None, service: str | None) -> int:
        """The index to answer a read of ``service`` (None: any) of ``peer``'s catalog with."""
        if service is None:
            return max(1, self._everything, self._any_service.get(peer, 0))
        named = self._by_service.get(peer, {}).get(service, 0)
        return max(self.of_whole(peer), named)

    def of_whole(self, peer: str | None) -> int:
        """The index of the last commit that may have changed every answer of ``peer``'s
        catalog: for the local one, what a config entry's answer can change with."""
        return max(1, self._everything, self._whole_catalog.get(peer, 0))

    def record(self, change: Change) -> None:
        index, wake = change.catalog_index, change.wake
        if wake is None:
            self._everything = max(self._everything, index)
            # Every remembered index is now at most this one: forget them.
            self._any_service.clear()
            self._whole_catalog.clear()
            self._by_service.clear()
            return
        peer = wake.peer
        self._any_service[peer] = max(self._any_service.get(peer, 0), index)
        if wake.services is None:
            self._whole_catalog[peer] = max(self._whole_catalog.get(peer, 0), index)
            self._by_service.pop(peer, None)  # each of them is at most this one now
            return
        by_service = self._by_service.setdefault(peer, {})
        for name in wake.services:
            by_service[name] = max(by_service.get(name, 0), index)
        if len(by_service) > self._max_tracked:
            self._whole_catalog[peer] = max(self._whole_catalog.get(peer, 0), *by_service.values())
            del self._by_service[peer]


class IndexNotifier:
    """Follows the catalog index, wakes the blocking queries a commit may concern and keeps
    each answer's own index (``AnswerIndexes``).

    ``bind`` runs inside the event loop; ``notify`` may then be called from any thread (bulk
    writes commit in worker threads) and hops onto the loop (``on_loop``).
    """

    def __init__(self, index: int = 0, max_tracked_services: int = MAX_TRACKED_SERVICES) -> None:
        self._index = index
        self._answers = AnswerIndexes(index, max_tracked_services)
        # peer (None: local) -> service (None: any) -> the event its queries wait on.
        self._watches: dict[str | None, dict[str | None, anyio.Event]] = {}
        self._notify_on_loop: Callable[[Change], None] = self._wake  # until bound to a loop
        self._closed = False

    @property
    def index(self) -> int:
        return self._index

    def index_of(self, peer: str | None, service: str | None) -> int:
        """The ``X-Consul-Index`` of a read of ``service`` (None: any) of ``peer``'s catalog
        (None: the local one): the last commit that may have changed it (``AnswerIndexes``).
        Take it before reading, as the catalog's index: the data read is then at least as new.
        """
        return self._answers.of(peer, service)

    def config_index(self) -> int:
        """The ``X-Consul-Index`` of a config entry: config changes are whole-catalog writes
        of the local catalog (``LOCAL``), registrations of named services are not."""
        return self._answers.of_whole(None)

    @property
    def closed(self) -> bool:
        """The agent is stopping: waiters are released and nothing will wake them again."""
        return self._closed

    def bind(self, index: int) -> None:
        """Attach to the running event loop, starting from the store's current index."""
        self._notify_on_loop = on_loop(self._wake)
        self._index = max(self._index, index)
        self._answers.record(Change(self._index))  # every answer is as new as the store

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
        self._answers.record(change)
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
