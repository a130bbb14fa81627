"""The instances imported from each peer, in memory, by service: what ``?peer=`` reads answer.

The ``imported`` table stays the record; this is its copy in the agent's memory, kept for the
path of a change to a watcher: an importer puts a batch here and wakes the blocking queries,
which answer from here while the batch's SQLite commit follows (``Store.stage_import``). A
read from SQLite after the commit cost the watcher the commit (~0.2 ms after the process
slept) and the read (~0.1 ms) before its answer.

A peer's set is primed by its importer when it starts (with the instances it loaded anyway)
or else loaded from the table on its first read, and then kept up to date by every write of
the store: an importer's batch as a delta, anything else (a resync's swap, a peering deleted)
by forgetting the peer, which the next read loads again. Thread-safe: bulk writes
commit in worker threads while the event loop reads; one short lock guards each mutation and
each read's copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from agent.catalog import instance_key
from agent.model import ServiceInstance


class _PeerSet:
    """One peer's imported instances: service name -> instance key -> instance."""

    def __init__(self, instances: Iterable[ServiceInstance]) -> None:
        self.by_service: dict[str, dict[str, ServiceInstance]] = {}
        self.service_of: dict[str, str] = {}
        for instance in instances:
            self.put(instance)

    def put(self, instance: ServiceInstance) -> tuple[str, ...]:
        """Upsert ``instance``; the services it changes (its own, and the one it leaves)."""
        key = instance_key(instance)
        old = self.service_of.get(key)
        if old is not None and old != instance.Name:
            self.drop(key)
        self.by_service.setdefault(instance.Name, {})[key] = instance
        self.service_of[key] = instance.Name
        return (instance.Name,) if old is None or old == instance.Name else (instance.Name, old)

    def drop(self, key: str) -> tuple[str, ...]:
        """Remove the instance under ``key``; the service it leaves (none if unknown)."""
        name = self.service_of.pop(key, None)
        if name is None:
            return ()
        service = self.by_service[name]
        del service[key]
        if not service:
            del self.by_service[name]
        return (name,)


class ImportedView:
    """Each peer's imported instances, loaded on first read through ``load``."""

    def __init__(self, load: Callable[[str], list[ServiceInstance]]) -> None:
        self._load = load
        self._peers: dict[str, _PeerSet] = {}
        # Moves with every write that touches a peer, loaded or not: a load that raced a
        # write (read the table before its commit) is used for its own read but not kept.
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def loaded(self, peer: str) -> bool:
        with self._lock:
            return peer in self._peers

    def version(self, peer: str) -> int:
        """Moves with every write that touches ``peer``."""
        with self._lock:
            return self._versions.get(peer, 0)

    def instances(self, peer: str, name: str | None = None) -> list[ServiceInstance]:
        """``peer``'s instances (all, or of service ``name``) ordered by key, as SQLite's
        ``ORDER BY key`` orders them (str order is code point order, which is UTF-8 byte
        order)."""
        with self._lock:
            peer_set = self._peers.get(peer)
            version = self._versions.get(peer, 0)
        if peer_set is None:
            # Outside the lock: loading a large set takes a while.
            peer_set = _PeerSet(self._load(peer))
            with self._lock:
                if self._versions.get(peer, 0) == version:
                    peer_set = self._peers.setdefault(peer, peer_set)
        with self._lock:
            if name is None:
                items = [
                    item for service in peer_set.by_service.values() for item in service.items()
                ]
            else:
                items = list(peer_set.by_service.get(name, {}).items())
        items.sort(key=_by_key)
        return [instance for _key, instance in items]

    def apply(
        self, peer: str, upserts: Iterable[ServiceInstance], removed: Iterable[str]
    ) -> tuple[int, frozenset[str] | None]:
        """One batch of an importer: upsert instances by key, remove keys. The peer's new
        version, and the services whose instances changed (what a removed or renamed
        instance belonged to included); None for those when the peer is not loaded: it
        stays so (its first read loads the table, which has the batch by then)."""
        with self._lock:
            version = self._versions[peer] = self._versions.get(peer, 0) + 1
            peer_set = self._peers.get(peer)
            if peer_set is None:
                return version, None
            services: set[str] = set()
            for instance in upserts:
                services.update(peer_set.put(instance))
            for key in removed:
                services.update(peer_set.drop(key))
            return version, frozenset(services)

    def prime(self, peer: str, instances: Iterable[ServiceInstance]) -> None:
        """Install ``peer``'s whole set as its importer holds it (the same objects, so the
        view costs its dicts, not a second copy; no read of the table)."""
        peer_set = _PeerSet(instances)
        with self._lock:
            self._versions[peer] = self._versions.get(peer, 0) + 1
            self._peers[peer] = peer_set

    def forget(self, peer: str) -> None:
        """Drop ``peer``'s copy: the next read loads it from the table again."""
        with self._lock:
            self._versions[peer] = self._versions.get(peer, 0) + 1
            self._peers.pop(peer, None)


def _by_key(item: tuple[str, ServiceInstance]) -> str:
    return item[0]
