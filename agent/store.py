"""The agent's state in SQLite: the only module that touches the database.

Tables: the local catalog (instances, checks), config entries, a monotonically increasing
catalog index (for blocking queries / ``X-Consul-Index``), the exported view per consumer peer
with its ordered change feed, and the imported catalog per peer.

Why synchronous: sqlite3 is a blocking library and every write must be committed and on disk
(fsync'd) before the API answers. Keeping the store plain and thread-safe lets the async shell
call it directly on the event loop for small work (reads: a WAL reader never waits for the
writer; writes of one instance: a few statements and one fsync, cheaper than the hop to a
thread and back) and in a worker thread (``anyio.to_thread.run_sync``) for bulk writes that
would stall the loop (a services file, a config entry over the whole catalog), while tests
and offline tools call it directly. Writes share one connection behind a lock; reads use it
too when it is free, else one connection per thread, which WAL lets run beside a writer.

Every local write recomputes the exported view (pure ``catalog.exported_view``), diffs it with
the stored one and appends the differences to ``exported_changes`` in the SAME transaction, so
the feed can never disagree with the catalog, even across a crash.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from agent import catalog
from agent.catalog import ExportedServicesEntry
from agent.imported_view import ImportedView
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.notifier import LOCAL, Change, Wake, imported
from agent.store_peering import (
    PEERING_SCHEMA,
    PeeringTables,
    Touched,
    _wire_to_local,
    upsert_imported,
)

Source = Literal["api", "file"]
DB_FILE = "agent.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL, body BLOB NOT NULL,
    create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_name ON instances (name);
CREATE TABLE IF NOT EXISTS checks (
    check_id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    pos INTEGER NOT NULL, body BLOB NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS checks_by_service ON checks (service_id);
CREATE INDEX IF NOT EXISTS checks_by_expiry ON checks (expires_at);
CREATE TABLE IF NOT EXISTS config_entries (
    kind TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL,
    create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS exported_current (
    peer TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (peer, key));
-- A write of a few instances refreshes the exported view of those instances only, by key;
-- the view is no longer refreshed a whole service at a time, so nothing reads it by name.
DROP INDEX IF EXISTS exported_current_by_name;
CREATE INDEX IF NOT EXISTS exported_current_by_key ON exported_current (key);
CREATE TABLE IF NOT EXISTS exported_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, key TEXT NOT NULL,
    body BLOB, changed_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS exported_changes_by_peer ON exported_changes (peer, seq);
CREATE TABLE IF NOT EXISTS imported (
    peer TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (peer, key));
-- (peer, name, key) serves a health query's WHERE and its ORDER BY key together. The older
-- (peer, name) index lost to the primary key, which the planner chose to skip the sort: every
-- query for one service then scanned the peer's whole imported set.
DROP INDEX IF EXISTS imported_by_name;
CREATE INDEX IF NOT EXISTS imported_by_service ON imported (peer, name, key);
CREATE TABLE IF NOT EXISTS imported_peers (peer TEXT PRIMARY KEY, stale INTEGER NOT NULL);
"""

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_instance_decoder = msgspec.json.Decoder(ServiceInstance)
_check_decoder = msgspec.json.Decoder(HealthCheck)
_entry_decoder = msgspec.json.Decoder(ExportedServicesEntry)


class StoreError(Exception):
    """A write was refused because it conflicts with stored state (a user error)."""


class LocalInstance(msgspec.Struct, frozen=True):
    """A local instance with where it came from and Consul's raft-style indexes."""

    Instance: ServiceInstance
    Source: str
    CreateIndex: int
    ModifyIndex: int


class FeedRow(msgspec.Struct, frozen=True):
    """One row of a peer's exported change feed; ``Instance`` None means removal."""

    Seq: int
    Peer: str
    Key: str
    Instance: ServiceInstance | None
    ChangedAt: float


async def write_on_loop(store: Store, fn: Callable[..., T], *args: Any) -> T:
    """Run a small write (``fn`` of ``store``) right here on the event loop, or in a worker
    thread while another thread holds the store.

    On the loop because the hop to a worker thread and back cost more than a small write
    (about 0.6 ms on a busy 2-core machine, on the path of every change); never waiting on
    the loop, because a bulk write in a thread (a services file, a config entry over the
    whole catalog) holds the store for seconds and the agent would freeze meanwhile.
    """
    with store.writer_if_free() as free:
        if free:
            return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


class Store(PeeringTables):
    """Synchronous, thread-safe access to the agent's SQLite database."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[Change], None] | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._on_change = on_change
        self._on_feed: Callable[[frozenset[str]], None] | None = None
        # Re-entrant so a caller holding it (writer_if_free) can run a write method.
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._conn = self._connect()
        # The highest index this store committed or handed out (``stage_import``, ahead of
        # its commit): later writes count from it, so the index never moves backwards, and a
        # stage needs no read for it.
        self._index_seen = 0
        # The exported-services entry as of the last commit (a 1-tuple; None: not read yet).
        # Every write of the catalog refreshes the exported view with it; only the writes
        # that recompute the whole view (``exported="all"``, config changes among them) read
        # it again: one statement less on a change's way to the peers.
        self._entry_cache: tuple[ExportedServicesEntry | None] | None = None
        # Per peer, the view's version right after ``stage_import`` applied a batch (its
        # commit need not apply the batch again unless the view moved since) and the
        # services the batch touched (whose queries the commit wakes again).
        self._staged_versions: dict[str, tuple[int, frozenset[str] | None]] = {}
        # ``?peer=`` reads answer from memory; not in a read-only store, whose database
        # another process writes.
        self._imported_view: ImportedView | None = None
        if readonly:
            return  # creating the schema is a write: a read-only store takes it as it is
        self._imported_view = ImportedView(self._load_imported)
        with self._lock:
            self._conn.executescript(_SCHEMA)
            self._conn.executescript(PEERING_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('index', 1)")

    @classmethod
    def open(cls, data_dir: Path, on_change: Callable[[Change], None] | None = None) -> Store:
        """Open (creating if needed) the database in ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / DB_FILE, on_change)

    @classmethod
    def open_readonly(cls, data_dir: Path) -> Store:
        """Open an existing database so that SQLite itself refuses every write (replay and
        other debugging tools read a running agent's state this way, beside the agent)."""
        path = data_dir / DB_FILE
        if not path.is_file():
            raise StoreError(f"no agent state in {data_dir} ({DB_FILE} not found)")
        return cls(path, readonly=True)

    def set_on_change(self, on_change: Callable[[Change], None] | None) -> None:
        """Install the callback run after each commit that moved the index."""
        self._on_change = on_change

    def set_on_feed(self, on_feed: Callable[[frozenset[str]], None] | None) -> None:
        """Install the callback run after each commit that appended to the exported-changes
        feed, with the peers whose feed grew (their exporters have work; nobody else)."""
        self._on_feed = on_feed

    @contextmanager
    def writer_if_free(self) -> Iterator[bool]:
        """Hold the writer lock if no other thread holds it (True), without waiting (False).

        For the event loop's small writes: a bulk write in a worker thread (a services file,
        a config entry over the whole catalog) holds the lock for seconds, and waiting for it
        on the loop would freeze the agent; the caller then waits in a thread instead.
        """
        free = self._lock.acquire(blocking=False)
        try:
            yield free
        finally:
            if free:
                self._lock.release()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a write is one transaction.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL between writes: the writes on a change's way to a peer commit without the
        # fsync (see _write's ``durable``); the others switch to FULL for their commit, which
        # then survives a power loss, not only a process crash.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        with self._lock:
            self._conn.close()

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for multi-statement reads."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        # The writer's connection when no write holds it (the event loop's reads: writes in
        # worker threads are the bulk ones): its page cache is warm, where another
        # connection finds its cache dropped after each commit of the writer and reads every
        # page again, a pread each. Else this thread's own reader connection.
        held = self._lock.acquire(blocking=False)
        try:
            if held and not self._conn.in_transaction:
                yield self._conn
                return
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._connect()
                self._local.conn = conn
                with self._readers_lock:
                    self._readers.append(conn)
            yield conn
        finally:
            if held:
                self._lock.release()

    def _write(
        self,
        apply: Callable[[sqlite3.Connection, int, Touched], bool],
        *,
        exported: Literal["none", "touched", "all"],
        now: float | None = None,
        durable: bool = True,
        staged_index: int | None = None,
        rewrites_imported_of: str | None = None,
        after_commit: Callable[[], Wake] | None = None,
    ) -> int:
        """Run ``apply(conn, next_index, touched)`` in one transaction; bump the index if it
        changed.

        ``durable=False`` commits without the fsync of ``synchronous=FULL`` (WAL with
        ``synchronous=NORMAL``): still atomic, and it survives a crash of the process, but
        a power loss may roll back the newest such transactions (whole, and only together
        with everything committed after them: the WAL is replayed in order). Only for state
        re-derived after such a loss and never acknowledged to anyone: the importer's
        cursor with its applied records (re-read from the topic at the older offset) and the
        publisher's post-acknowledgement bookkeeping (reconciled on restart); and for the
        API's writes of one instance or check, which ``sync`` makes durable before they are
        acknowledged (see ``httpapi.Api.write``). The next durable commit syncs these frames
        too.

        ``exported`` says whether the write may change what peers see: the exported view of
        the instances ``apply`` put in ``touched`` (or of every instance, for config changes)
        is then recomputed and its diff appended to the feed in the same transaction.

        ``staged_index`` is the index ``stage_import`` already handed out for this write: the
        write takes it rather than a new one (unless another write has gone past it).

        ``rewrites_imported_of``: the write changes that peer's imported set otherwise than
        by an importer's batch (a swap, a drop); the imported view forgets the peer once the
        transaction is over, committed or not, and the next read loads it again; every
        blocking query on that peer's catalog is woken.

        ``after_commit`` runs once the transaction is committed and says whom the change
        concerns (``notifier.Wake``, an importer's batch in the view). Both come before the
        callbacks that wake the exporters and the blocking queries: a query woken by a write
        in a worker thread runs on the loop while that thread is still here, and it must
        find the view as the commit left it (else it answers the new index with the old set,
        and the set changes under an index its watcher has already seen: a lost update).

        Otherwise a write of the local catalog (``exported`` other than "none") wakes the
        blocking queries on the services it touched (all local ones for a config change),
        and any other write wakes every query.
        """
        if self.readonly:
            raise StoreError("this store was opened read-only")
        try:
            with self._lock:
                index, changed, fed, local = self._transaction(
                    apply, exported, now, durable, staged_index
                )
        finally:
            if rewrites_imported_of is not None:
                self._forget_imported(rewrites_imported_of)
        # The view is as the commit left it before anyone hears of the change: a write in a
        # worker thread is still running here when the loop's readers it woke read the view.
        wake: Wake | None  # None: every blocking query
        if after_commit is not None:
            wake = after_commit()
        elif rewrites_imported_of is not None:
            wake = imported(rewrites_imported_of)
        else:
            wake = local
        # Exporters first: each callback may wait for a hop onto the event loop, and the
        # exporter's produce is on the path to the peer; local blocking queries can wait.
        if fed and self._on_feed is not None:
            self._on_feed(fed)
        if changed and self._on_change is not None:
            self._on_change(Change(index, wake))
        return index

    def _transaction(
        self,
        apply: Callable[[sqlite3.Connection, int, Touched], bool],
        exported: Literal["none", "touched", "all"],
        now: float | None,
        durable: bool,
        staged_index: int | None,
    ) -> tuple[int, bool, frozenset[str], Wake | None]:
        """``_write``'s transaction, under the writer lock: (index, changed, peers fed, the
        local queries a catalog write may have changed the answer of; None for others)."""
        conn = self._conn
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        fed: frozenset[str] = frozenset()
        local: Wake | None = None
        try:
            stored = _get_index(conn)
            index = max(stored, self._index_seen)
            touched = Touched()
            changed = apply(conn, index + 1, touched)
            if changed and exported != "none":
                # A config change may change any answer about the local catalog.
                local = LOCAL if exported == "all" else touched.wake()
                if exported == "all" or self._entry_cache is None:
                    self._entry_cache = (_load_entry(conn),)
                refresh = None if exported == "all" else touched
                when = time.time() if now is None else now
                fed = _refresh_exported(conn, when, refresh, self._entry_cache[0])
            if staged_index is not None:
                index = max(index, staged_index)
            elif changed:
                index += 1
            else:
                index = stored  # nothing to announce, nothing to persist
            if index != stored:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'index'", (index,))
            conn.execute("COMMIT")
            self._index_seen = max(self._index_seen, index)
        except BaseException:
            conn.execute("ROLLBACK")
            self._entry_cache = None  # it may have been read inside the transaction
            raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")
        return index, changed, fed, local

    # --- catalog index ---------------------------------------------------------------------

    @property
    def index(self) -> int:
        """The catalog index: moves on every committed change of anything readable."""
        with self._read() as conn:
            return _get_index(conn)

    # --- local catalog: writes -------------------------------------------------------------

    def register(
        self,
        instance: ServiceInstance,
        source: Source = "api",
        now: float | None = None,
        *,
        durable: bool = True,
    ) -> int:
        """Insert or replace an instance and its checks; existing checks keep their status."""
        at = time.time() if now is None else now
        return self._write(
            lambda c, i, t: _put_instances(c, i, [instance], source, at, t),
            exported="touched",
            now=at,
            durable=durable,
        )

    def deregister(self, service_id: str, *, durable: bool = True) -> bool:
        """Remove an instance and its checks; False if it was not registered."""
        found = False

        def apply(conn: sqlite3.Connection, _index: int, touched: Touched) -> bool:
            nonlocal found
            found = _delete_instance(conn, service_id, touched)
            return found

        self._write(apply, exported="touched", durable=durable)
        return found

    def update_check(
        self,
        check_id: str,
        status: CheckStatus,
        output: str | None = None,
        now: float | None = None,
        *,
        durable: bool = True,
    ) -> bool:
        """Set a check's status (pass/warn/fail) and refresh its TTL; False if unknown."""
        at = time.time() if now is None else now
        found = False

        def apply(conn: sqlite3.Connection, index: int, touched: Touched) -> bool:
            nonlocal found
            row = conn.execute(
                "SELECT service_id, body FROM checks WHERE check_id = ?", (check_id,)
            ).fetchone()
            if row is None:
                return False
            found = True
            old = _check_decoder.decode(row[1])
            new = msgspec.structs.replace(
                old, Status=status, Output=old.Output if output is None else output
            )
            conn.execute(
                "UPDATE checks SET body = ?, expires_at = ? WHERE check_id = ?",
                (_encoder.encode(new), catalog.ttl_deadline(new, at), check_id),
            )
            if new == old:
                return False
            _touch(conn, index, row[0], touched)
            return True

        self._write(apply, exported="touched", now=at, durable=durable)
        return found

    def sync(self) -> None:
        """Make every commit so far survive a power loss: fdatasync the WAL, where commits
        live until a checkpoint (which syncs what it copies into the database file itself).
        For writes committed with ``durable=False`` that are acknowledged afterwards.
        Opened by name each time rather than kept open: whatever file SQLite uses now."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDONLY)  # no WAL: everything is in the database file
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def ttl_due(self, now: float | None = None) -> bool:
        """Whether a TTL check's deadline has passed: one read along ``checks_by_expiry``,
        so the expiry's write transaction runs only when it has something to do."""
        at = time.time() if now is None else now
        with self._reader() as conn:
            row = conn.execute("SELECT 1 FROM checks WHERE expires_at <= ? LIMIT 1", (at,))
            return row.fetchone() is not None

    def expire_ttl_checks(self, now: float | None = None) -> list[str]:
        """Turn TTL checks whose deadline passed critical; return their ids."""
        at = time.time() if now is None else now
        expired: list[str] = []

        def apply(conn: sqlite3.Connection, index: int, touched: Touched) -> bool:
            rows = conn.execute(
                "SELECT check_id, service_id, body, expires_at FROM checks"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (at,),
            ).fetchall()
            checks = {r[0]: (r[1], _check_decoder.decode(r[2])) for r in rows}
            states = [catalog.TtlState(r[0], checks[r[0]][1].Status, r[3]) for r in rows]
            expired.extend(catalog.expired_checks(states, at))
            for check_id in expired:
                service_id, check = checks[check_id]
                conn.execute(
                    "UPDATE checks SET body = ? WHERE check_id = ?",
                    (_encoder.encode(catalog.expire(check)), check_id),
                )
                _touch(conn, index, service_id, touched)
            # A deadline fires once; the next pass/warn/fail sets a new one.
            conn.executemany(
                "UPDATE checks SET expires_at = NULL WHERE check_id = ?", [(r[0],) for r in rows]
            )
            return bool(expired)

        self._write(apply, exported="touched", now=at)
        return expired

    def sync_file_services(
        self, instances: Iterable[ServiceInstance], now: float | None = None
    ) -> int:
        """Make the file-sourced registrations exactly ``instances`` in one transaction."""
        at = time.time() if now is None else now
        wanted = list(instances)

        def apply(conn: sqlite3.Connection, index: int, touched: Touched) -> bool:
            changed = _put_instances(conn, index, wanted, "file", at, touched)
            keep = {inst.ID for inst in wanted}
            for (service_id,) in conn.execute(
                "SELECT id FROM instances WHERE source = 'file'"
            ).fetchall():
                if service_id not in keep:
                    changed |= _delete_instance(conn, service_id, touched)
            return changed

        return self._write(apply, exported="touched", now=at)

    # --- local catalog: reads --------------------------------------------------------------

    def list_local(self, name: str | None = None) -> list[LocalInstance]:
        """Local instances (all, or of one service) with source and indexes, by ID."""
        with self._read() as conn:
            return _load_instances(conn, name)

    def instances(self, name: str | None = None) -> list[ServiceInstance]:
        """Local instances (all, or of one service), ordered by ID."""
        return [local.Instance for local in self.list_local(name)]

    def instance(self, service_id: str) -> ServiceInstance | None:
        with self._read() as conn:
            return _load_instance(conn, service_id)

    def checks(self) -> list[HealthCheck]:
        """Every local check, ordered by id."""
        with self._read() as conn:
            rows = conn.execute("SELECT body FROM checks ORDER BY check_id").fetchall()
        return [_check_decoder.decode(r[0]) for r in rows]

    def service_names(self) -> dict[str, list[str]]:
        """``/v1/catalog/services`` for the local catalog."""
        return catalog.service_tags(self.instances())

    # --- config entries --------------------------------------------------------------------

    def set_exported_services(self, entry: ExportedServicesEntry) -> int:
        """Store the (already validated) exported-services entry; recompute the feed."""
        body = _encoder.encode(msgspec.structs.replace(entry, CreateIndex=0, ModifyIndex=0))

        def apply(conn: sqlite3.Connection, index: int, _touched: Touched) -> bool:
            row = conn.execute(
                "SELECT body FROM config_entries WHERE kind = ? AND name = ?",
                (entry.Kind, entry.Name),
            ).fetchone()
            if row is not None and bytes(row[0]) == body:
                return False
            conn.execute(
                "INSERT INTO config_entries (kind, name, body, create_index, modify_index)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE"
                " SET body = excluded.body, modify_index = excluded.modify_index",
                (entry.Kind, entry.Name, body, index, index),
            )
            return True

        return self._write(apply, exported="all")

    def delete_exported_services(self) -> int:
        """Remove the exported-services entry (nothing is exported any more)."""

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            cur = conn.execute(
                "DELETE FROM config_entries WHERE kind = ? AND name = ?",
                (catalog.EXPORTED_SERVICES_KIND, catalog.EXPORTED_SERVICES_NAME),
            )
            return cur.rowcount > 0

        return self._write(apply, exported="all")

    def exported_services(self) -> ExportedServicesEntry | None:
        """The exported-services entry with Create/ModifyIndex, or None if never set."""
        with self._read() as conn:
            return _load_entry(conn)

    # --- exported view and change feed -----------------------------------------------------

    def exported_view(self, peer: str) -> dict[str, ServiceInstance]:
        """What ``peer`` should currently see: {instance_key: instance}."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT key, body FROM exported_current WHERE peer = ? ORDER BY key", (peer,)
            ).fetchall()
        return {r[0]: _instance_decoder.decode(r[1]) for r in rows}

    def exported_peers(self) -> list[str]:
        """Peers that see something now or have feed rows (e.g. pending removals)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT peer FROM exported_current UNION SELECT peer FROM exported_changes"
                " ORDER BY peer"
            )
            return [r[0] for r in rows.fetchall()]

    def prune_exported_changes(self, peer: str, through_seq: int) -> int:
        """Drop ``peer``'s feed rows with seq <= ``through_seq`` (published and acknowledged).

        Safe because ``exported_view`` is materialised: a reconcile never needs old rows.
        The newest row is always kept so ``last_exported_seq`` never goes backwards.
        Returns the number of rows removed; the catalog index does not move.
        """
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "DELETE FROM exported_changes WHERE peer = ? AND seq <= ? AND seq <"
                    " (SELECT MAX(seq) FROM exported_changes WHERE peer = ?)",
                    (peer, through_seq, peer),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return int(cur.rowcount)

    def exported_changes(self, peer: str, after_seq: int = 0, limit: int = 1000) -> list[FeedRow]:
        """The feed rows of ``peer`` with seq > ``after_seq``, in order, at most ``limit``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, key, body, changed_at FROM exported_changes"
                " WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?",
                (peer, after_seq, limit),
            ).fetchall()
        return [
            FeedRow(
                r[0], peer, r[1], None if r[2] is None else _instance_decoder.decode(r[2]), r[3]
            )
            for r in rows
        ]

    def last_exported_seq(self, peer: str) -> int:
        """The newest feed seq of ``peer``; 0 when it has none."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT MAX(seq) FROM exported_changes WHERE peer = ?", (peer,)
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def exported_summary(self) -> list[catalog.ResolvedExport]:
        """``GET /v1/exported-services``: registered services and their consumer peers."""
        with self._read() as conn:
            instances = [local.Instance for local in _load_instances(conn, None)]
            entry = _load_entry(conn)
        return catalog.resolved_exports(instances, entry)

    # --- imported catalog ------------------------------------------------------------------

    def replace_imported(self, peer: str, instances: Iterable[ServiceInstance]) -> int:
        """Atomically make ``instances`` the whole imported set of ``peer``."""
        wanted = {catalog.instance_key(inst): inst for inst in instances}

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            current = _imported_bodies(conn, peer)
            new = {key: _encoder.encode(inst) for key, inst in wanted.items()}
            _ensure_peer(conn, peer)
            if current == new:
                return False
            conn.execute("DELETE FROM imported WHERE peer = ?", (peer,))
            conn.executemany(
                "INSERT INTO imported (peer, key, name, body) VALUES (?, ?, ?, ?)",
                [(peer, key, wanted[key].Name, body) for key, body in new.items()],
            )
            return True

        return self._write(apply, exported="none", rewrites_imported_of=peer)

    def apply_imported(
        self, peer: str, upserts: Iterable[ServiceInstance], removals: Iterable[str]
    ) -> int:
        """Upsert instances and remove keys of ``peer``'s imported set in one transaction."""
        ups = list(upserts)
        rems = list(removals)

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            _ensure_peer(conn, peer)
            changed = False
            for inst in ups:
                key = catalog.instance_key(inst)
                body = _encoder.encode(inst)
                row = conn.execute(
                    "SELECT body FROM imported WHERE peer = ? AND key = ?", (peer, key)
                ).fetchone()
                if row is None or bytes(row[0]) != body:
                    upsert_imported(conn, peer, key, inst.Name, body)
                    changed = True
            for key in rems:
                cur = conn.execute("DELETE FROM imported WHERE peer = ? AND key = ?", (peer, key))
                changed |= cur.rowcount > 0
            return changed

        return self._write(apply, exported="none", rewrites_imported_of=peer)

    def set_imported_stale(self, peer: str, stale: bool) -> int:
        """Flag ``peer``'s imported services as stale (peering FAILING) or fresh again."""

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            _ensure_peer(conn, peer)
            cur = conn.execute(
                "UPDATE imported_peers SET stale = ? WHERE peer = ? AND stale != ?",
                (int(stale), peer, int(stale)),
            )
            return cur.rowcount > 0

        return self._write(apply, exported="none")

    def drop_imported(self, peer: str) -> int:
        """Forget everything imported from ``peer`` (peering deleted)."""

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            removed = conn.execute("DELETE FROM imported WHERE peer = ?", (peer,)).rowcount
            dropped = conn.execute("DELETE FROM imported_peers WHERE peer = ?", (peer,)).rowcount
            return removed + dropped > 0

        return self._write(apply, exported="none", rewrites_imported_of=peer)

    def imported_instances(self, peer: str, name: str | None = None) -> list[ServiceInstance]:
        """Instances imported from ``peer`` (all, or of one service), ordered by key."""
        if self._imported_view is not None:
            return self._imported_view.instances(peer, name)
        with self._read() as conn:
            if name is None:
                rows = conn.execute(
                    "SELECT body FROM imported WHERE peer = ? ORDER BY key", (peer,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT body FROM imported WHERE peer = ? AND name = ? ORDER BY key",
                    (peer, name),
                ).fetchall()
        return [_instance_decoder.decode(r[0]) for r in rows]

    def _load_imported(self, peer: str) -> list[ServiceInstance]:
        """Everything imported from ``peer``: what ``imported_view`` loads."""
        with self._read() as conn:
            rows = conn.execute("SELECT body FROM imported WHERE peer = ?", (peer,)).fetchall()
        return [_instance_decoder.decode(row[0]) for row in rows]

    def stage_import(
        self, peer: str, upserts: Sequence[ServiceInstance], removed_keys: Sequence[str]
    ) -> int | None:
        """Put an importer's batch in the imported view and wake the readers, ahead of its
        commit; the index handed out, which the commit (``commit_import(staged_index=)``)
        then takes. None, and nothing done, when the view is not loaded for ``peer`` or a
        write in a worker thread holds the store: the batch then goes the usual way.

        On the event loop only. A watcher's answer no longer waits for the commit. That
        costs nothing in consistency: the batch is already the importer's state, and should
        the commit not happen (crash, cancellation: then ``unstage_import``), the importer
        reads the same records again and reaches the same set.
        """
        view = self._imported_view
        if view is None or not view.loaded(peer) or not (upserts or removed_keys):
            return None
        with self.writer_if_free() as free:
            if not free:
                return None
            index = (self._index_seen or _get_index(self._conn)) + 1
            self._index_seen = index
            version, services = view.apply(
                peer, upserts, [_wire_to_local(key) for key in removed_keys]
            )
            self._staged_versions[peer] = (version, services)
        if self._on_change is not None:
            self._on_change(Change(index, imported(peer, services)))
        return index

    def prime_imported(self, peer: str, instances: Iterable[ServiceInstance]) -> None:
        """Give the imported view ``peer``'s set as its importer loaded it from this store."""
        if self._imported_view is not None:
            self._imported_view.prime(peer, instances)

    def unstage_import(self, peer: str) -> None:
        """A staged batch will not be committed: the view loads ``peer`` from the table again."""
        self._forget_imported(peer)

    def _imported_applied(
        self, peer: str, upserts: list[ServiceInstance], removed_keys: list[str], staged: bool
    ) -> frozenset[str] | None:
        """After an importer's commit: the same change in the view, unless its stage put it
        there and nothing touched the view since (a bulk load applies 2,000 per batch). The
        services it touched, for the wake-ups (None: unknown, the view does not hold the
        peer)."""
        view = self._imported_view
        if view is None:
            return None
        version, services = self._staged_versions.pop(peer, (None, None))
        if staged and version == view.version(peer):
            return services
        return view.apply(peer, upserts, removed_keys)[1]

    def _forget_imported(self, peer: str) -> None:
        """After a write of ``peer``'s imported set other than an importer's batch."""
        if self._imported_view is not None:
            self._imported_view.forget(peer)

    def imported_service_names(self, peer: str) -> dict[str, list[str]]:
        """``/v1/catalog/services?peer=``: imported service name -> tags."""
        return catalog.service_tags(self.imported_instances(peer))

    def imported_peers(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute("SELECT peer FROM imported_peers ORDER BY peer").fetchall()
        return [r[0] for r in rows]

    def imported_stale(self, peer: str) -> bool:
        """True when ``peer``'s imported services are flagged stale."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT stale FROM imported_peers WHERE peer = ?", (peer,)
            ).fetchone()
        return bool(row[0]) if row else False


# --- helpers running inside a transaction -------------------------------------------------


def _get_index(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'index'").fetchone()
    return int(row[0])


def _load_entry(conn: sqlite3.Connection) -> ExportedServicesEntry | None:
    row = conn.execute(
        "SELECT body, create_index, modify_index FROM config_entries WHERE kind = ? AND name = ?",
        (catalog.EXPORTED_SERVICES_KIND, catalog.EXPORTED_SERVICES_NAME),
    ).fetchone()
    if row is None:
        return None
    entry = _entry_decoder.decode(row[0])
    return msgspec.structs.replace(entry, CreateIndex=row[1], ModifyIndex=row[2])


def _checks_by_service(
    conn: sqlite3.Connection, service_id: str | None, name: str | None = None
) -> dict[str, list[HealthCheck]]:
    if service_id is None and name is None:
        rows = conn.execute("SELECT service_id, body FROM checks ORDER BY service_id, pos")
    elif service_id is None:
        rows = conn.execute(
            "SELECT c.service_id, c.body FROM checks c JOIN instances i ON c.service_id = i.id"
            " WHERE i.name = ? ORDER BY c.service_id, c.pos",
            (name,),
        )
    else:
        rows = conn.execute(
            "SELECT service_id, body FROM checks WHERE service_id = ? ORDER BY pos",
            (service_id,),
        )
    out: dict[str, list[HealthCheck]] = {}
    for sid, body in rows.fetchall():
        out.setdefault(sid, []).append(_check_decoder.decode(body))
    return out


def _load_instances(conn: sqlite3.Connection, name: str | None) -> list[LocalInstance]:
    sql = "SELECT id, source, body, create_index, modify_index FROM instances"
    params: tuple[str, ...] = ()
    if name is not None:
        sql += " WHERE name = ?"
        params = (name,)
    rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    # Only the checks of the service asked for: health queries must not scale with the catalog.
    checks = _checks_by_service(conn, None, name)
    return [
        LocalInstance(
            msgspec.structs.replace(
                _instance_decoder.decode(body), Checks=tuple(checks.get(sid, ()))
            ),
            source,
            create_index,
            modify_index,
        )
        for sid, source, body, create_index, modify_index in rows
    ]


def _load_instance(conn: sqlite3.Connection, service_id: str) -> ServiceInstance | None:
    row = conn.execute("SELECT body FROM instances WHERE id = ?", (service_id,)).fetchone()
    if row is None:
        return None
    checks = _checks_by_service(conn, service_id).get(service_id, [])
    return msgspec.structs.replace(_instance_decoder.decode(row[0]), Checks=tuple(checks))


def _touch(conn: sqlite3.Connection, index: int, service_id: str, touched: Touched) -> None:
    """Mark an instance modified at ``index`` and as needing an export refresh."""
    row = conn.execute(
        "UPDATE instances SET modify_index = ? WHERE id = ? RETURNING name", (index, service_id)
    ).fetchone()
    touched.mark(service_id, None, *(() if row is None else (row[0],)))


class _Stored(NamedTuple):
    """An instance row as stored, with its checks."""

    source: str
    create_index: int
    name: str
    instance: ServiceInstance


def _chunks(values: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """Slices small enough for an ``IN (...)`` list (SQLite caps bound parameters)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _load_stored(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, _Stored]:
    """The stored rows of ``ids`` (those that exist) with their checks, in few queries."""
    checks: dict[str, list[HealthCheck]] = {}
    rows: list[tuple[str, str, int, str, bytes]] = []
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(
            f"SELECT id, source, create_index, name, body FROM instances WHERE id IN ({marks})",
            chunk,
        ).fetchall()
        for sid, body in conn.execute(
            f"SELECT service_id, body FROM checks WHERE service_id IN ({marks})"
            " ORDER BY service_id, pos",
            chunk,
        ).fetchall():
            checks.setdefault(sid, []).append(_check_decoder.decode(body))
    return {
        sid: _Stored(
            source,
            create_index,
            name,
            msgspec.structs.replace(
                _instance_decoder.decode(body), Checks=tuple(checks.get(sid, ()))
            ),
        )
        for sid, source, create_index, name, body in rows
    }


def _check_owners(conn: sqlite3.Connection, check_ids: Sequence[str]) -> dict[str, str]:
    """check id -> the service id owning it, for the check ids given that exist."""
    owners: dict[str, str] = {}
    for chunk in _chunks(check_ids):
        marks = ",".join("?" * len(chunk))
        owners.update(
            conn.execute(
                f"SELECT check_id, service_id FROM checks WHERE check_id IN ({marks})", chunk
            ).fetchall()
        )
    return owners


def _put_instances(
    conn: sqlite3.Connection,
    index: int,
    instances: Sequence[ServiceInstance],
    source: str,
    now: float,
    touched: Touched,
) -> bool:
    """Insert or update ``instances`` with their checks; False when nothing changed.

    One read of what is stored and one batched write per table, whatever the count: a 100k
    services file took ~7 statements per instance. A check id may belong to one instance
    only; instances in the batch give up the checks they had, so the outcome does not
    depend on the order of the batch.
    """
    ids = [instance.ID for instance in instances]
    stored = _load_stored(conn, ids)
    owners = _check_owners(conn, [c.CheckID for i in instances for c in i.Checks])
    batch = set(ids)
    owners = {check: sid for check, sid in owners.items() if sid not in batch}
    # A column in an upsert's SET rewrites its index entries even when the value is the same
    # (SQLite does not compare): rows whose indexed columns stay go through UPDATEs that
    # leave them out, so the name's and the checks' indexes are not rewritten for them.
    rows: list[tuple[str, str, str, bytes, int, int]] = []
    same_name_rows: list[tuple[str, bytes, int, str]] = []
    check_rows: list[tuple[str, str, int, bytes, float | None]] = []
    kept_check_rows: list[tuple[int, bytes, float | None, str]] = []
    kept_untimed_check_rows: list[tuple[int, bytes, str]] = []
    gone_checks: list[tuple[str, str]] = []
    for instance in instances:
        for check in instance.Checks:
            owner = owners.setdefault(check.CheckID, instance.ID)
            if owner != instance.ID:
                raise StoreError(f"check id {check.CheckID!r} already belongs to service {owner!r}")
        old = stored.get(instance.ID)
        new = catalog.carry_check_state(old.instance if old else None, instance)
        if old is not None and old.instance == new and old.source == source:
            continue
        touched.mark(new.ID, new, new.Name, *(() if old is None else (old.name,)))
        body = _encoder.encode(msgspec.structs.replace(new, Checks=()))
        if old is not None and old.name == new.Name:
            same_name_rows.append((source, body, index, new.ID))
        else:
            rows.append((new.ID, new.Name, source, body, old.create_index if old else index, index))
        had = {} if old is None else {c.CheckID: c for c in old.instance.Checks}
        for pos, check in enumerate(new.Checks):
            encoded, deadline = _encoder.encode(check), catalog.ttl_deadline(check, now)
            before = had.get(check.CheckID)
            if before is None:
                check_rows.append((check.CheckID, new.ID, pos, encoded, deadline))
            elif deadline is None and catalog.ttl_deadline(before, now) is None:
                kept_untimed_check_rows.append((pos, encoded, check.CheckID))
            else:
                kept_check_rows.append((pos, encoded, deadline, check.CheckID))
        kept = {c.CheckID for c in new.Checks}
        gone_checks += [(check_id, new.ID) for check_id in had if check_id not in kept]
    if not rows and not same_name_rows:
        return False
    conn.executemany(
        "INSERT INTO instances (id, name, source, body, create_index, modify_index)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
        " source = excluded.source, body = excluded.body, modify_index = excluded.modify_index",
        rows,
    )
    conn.executemany(
        "UPDATE instances SET source = ?, body = ?, modify_index = ? WHERE id = ?", same_name_rows
    )
    # The checks an instance no longer has go first (another instance of the batch may take
    # one over); the others are updated in place, rewriting fewer index pages than a delete
    # and insert of each. A check the instance already had keeps its service_id (and, without
    # a TTL, its NULL deadline), so neither is set again.
    conn.executemany("DELETE FROM checks WHERE check_id = ? AND service_id = ?", gone_checks)
    conn.executemany(
        "INSERT INTO checks (check_id, service_id, pos, body, expires_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (check_id) DO UPDATE SET service_id = excluded.service_id,"
        " pos = excluded.pos, body = excluded.body, expires_at = excluded.expires_at",
        check_rows,
    )
    conn.executemany(
        "UPDATE checks SET pos = ?, body = ?, expires_at = ? WHERE check_id = ?", kept_check_rows
    )
    conn.executemany(
        "UPDATE checks SET pos = ?, body = ? WHERE check_id = ?", kept_untimed_check_rows
    )
    return True


def _delete_instance(conn: sqlite3.Connection, service_id: str, touched: Touched) -> bool:
    row = conn.execute("SELECT name FROM instances WHERE id = ?", (service_id,)).fetchone()
    if row is None:
        return False
    touched.mark(service_id, None, row[0])
    conn.execute("DELETE FROM checks WHERE service_id = ?", (service_id,))
    conn.execute("DELETE FROM instances WHERE id = ?", (service_id,))
    return True


# Touched instances above which _refresh_exported recomputes the whole view in one pass.
_REFRESH_ALL_ABOVE = 2000


def _refresh_exported(
    conn: sqlite3.Connection,
    now: float,
    touched: Touched | None,
    entry: ExportedServicesEntry | None,
) -> frozenset[str]:
    """Recompute the exported view (of the ``touched`` instances, or all), store it and
    append its diff to the feed; the peers whose feed grew.

    An instance's view depends on nothing but itself and the config entry, so a write of a
    few instances costs the same whatever the size of their services (it used to reload the
    whole service: 45 ms to register one instance into a service of 10,000). Past a few
    thousand instances one pass over all is cheaper than looking each up (the view of an
    untouched instance comes out the same, so its diff is empty)."""
    if touched is not None and len(touched) > _REFRESH_ALL_ABOVE:
        touched = None
    if touched is None:
        instances = [local.Instance for local in _load_instances(conn, None)]
        current = conn.execute("SELECT peer, key, body FROM exported_current").fetchall()
    else:
        keys = sorted(touched)
        instances = [instance for instance in touched.values() if instance is not None]
        unknown = [key for key in keys if touched[key] is None]
        instances += [stored.instance for stored in _load_stored(conn, unknown).values()]
        current = []
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            current += conn.execute(
                f"SELECT peer, key, body FROM exported_current WHERE key IN ({marks})", chunk
            ).fetchall()
    new = catalog.exported_view(instances, entry)
    old: dict[str, dict[str, ServiceInstance]] = {}
    for peer, key, body in current:
        old.setdefault(peer, {})[key] = _instance_decoder.decode(body)
    removed: list[tuple[str, str]] = []
    upserted: list[tuple[str, str, str, bytes]] = []
    feed: list[tuple[str, str, bytes | None, float]] = []
    for change in catalog.diff_views(old, new):
        if change.Instance is None:
            removed.append((change.Peer, change.Key))
            feed.append((change.Peer, change.Key, None, now))
        else:
            body = _encoder.encode(change.Instance)
            upserted.append((change.Peer, change.Key, change.Instance.Name, body))
            feed.append((change.Peer, change.Key, body, now))
    conn.executemany("DELETE FROM exported_current WHERE peer = ? AND key = ?", removed)
    # An upsert, not INSERT OR REPLACE: see store_peering.upsert_imported.
    conn.executemany(
        "INSERT INTO exported_current (peer, key, name, body) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (peer, key) DO UPDATE SET name = excluded.name, body = excluded.body",
        upserted,
    )
    # In diff order: the feed's seq (AUTOINCREMENT) is the order exporters publish in.
    conn.executemany(
        "INSERT INTO exported_changes (peer, key, body, changed_at) VALUES (?, ?, ?, ?)", feed
    )
    return frozenset(peer for peer, _key, _body, _at in feed)


def _imported_bodies(conn: sqlite3.Connection, peer: str) -> dict[str, bytes]:
    rows = conn.execute("SELECT key, body FROM imported WHERE peer = ?", (peer,)).fetchall()
    return {r[0]: bytes(r[1]) for r in rows}


def _ensure_peer(conn: sqlite3.Connection, peer: str) -> None:
    conn.execute("INSERT OR IGNORE INTO imported_peers (peer, stale) VALUES (?, 0)", (peer,))
