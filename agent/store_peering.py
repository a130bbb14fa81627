"""Peering tables of the agent's SQLite store (part of agent.store; kept apart for size).

- ``peerings``: one JSON document per peering (agent.peering.records.PeeringRecord);
- ``publisher``: per peering, what the exporter last published (epoch, next seq, feed cursor,
  end offset acknowledged by the broker, live keyring) and ``published`` fingerprints per key;
- ``import_cursor``: per peering, the importer's ImportState (without instances, which live
  in the ``imported`` table) and live keyring.

The importer's apply and its cursor are written in ONE transaction (promise 5): a crash either
keeps both or neither, so re-reading the same records after a restart changes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import immutables
import msgspec

from agent import catalog
from agent.model import ServiceInstance
from agent.notifier import LOCAL, Wake, imported
from agent.peering.records import PeeringRecord
from agent.reducer import ImportState, PublisherState
from agent.wire.events import INSTANCE_KEY_PREFIX, instance_key
from agent.wire.keys import StreamKeyring

PEERING_SCHEMA = """
CREATE TABLE IF NOT EXISTS peerings (
    name TEXT PRIMARY KEY, peering_id TEXT NOT NULL UNIQUE, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS publisher (
    peering_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, next_seq INTEGER NOT NULL,
    feed_seq INTEGER NOT NULL, acked_end INTEGER NOT NULL, keyring BLOB NOT NULL);
-- Every Seq below the ceiling may have been produced: a restart resumes there (kept apart
-- from publisher so data dirs from before seq blocks need no migration).
CREATE TABLE IF NOT EXISTS publisher_seq_ceiling (
    peering_id TEXT PRIMARY KEY, ceiling INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS published (
    peering_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (peering_id, key));
CREATE TABLE IF NOT EXISTS import_cursor (
    peering_id TEXT PRIMARY KEY, state BLOB NOT NULL, keyring BLOB NOT NULL);
"""

# Upserts update a row in place where INSERT OR REPLACE deletes and reinserts it, rewriting
# a page of every index as well: a register's commit wrote 9-10 pages, an import's 6-7. And
# a column in the SET rewrites its index entry even for the same value, so the name (in
# imported_by_service) is set only by the rename below, for the rare instance that moved.
_UPSERT_IMPORTED_SAME_NAME = (
    "INSERT INTO imported (peer, key, name, body) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (peer, key) DO UPDATE SET body = excluded.body WHERE name = excluded.name"
)
_RENAME_IMPORTED = "UPDATE imported SET name = ?, body = ? WHERE peer = ? AND key = ?"


def upsert_imported(conn: sqlite3.Connection, peer: str, key: str, name: str, body: bytes) -> None:
    """Insert or update one imported instance, rewriting its name's index entry only if
    the name changed."""
    if conn.execute(_UPSERT_IMPORTED_SAME_NAME, (peer, key, name, body)).rowcount == 0:
        conn.execute(_RENAME_IMPORTED, (name, body, peer, key))  # stored under another name


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(PeeringRecord)
_keyring_decoder = msgspec.json.Decoder(StreamKeyring)
_import_state_decoder = msgspec.json.Decoder(ImportState)
_instance_decoder = msgspec.json.Decoder(ServiceInstance)


class PublisherCursor(msgspec.Struct, frozen=True, kw_only=True):
    """The exporter's persisted position on one stream."""

    state: PublisherState
    keyring: StreamKeyring
    # Newest exported-changes feed seq already turned into events.
    feed_seq: int = 0
    # Kafka end offset right after our last acknowledged record; an end offset below it on
    # restart means the topic lost records and the full view must be republished.
    acked_end: int = 0
    # Seqs below this are reserved (durably, a block at a time; see reducer.seq_ceiling_for).
    seq_ceiling: int = 0


class ImportCursor(msgspec.Struct, frozen=True, kw_only=True):
    """The importer's persisted position on one stream, with its instances loaded."""

    state: ImportState
    keyring: StreamKeyring


class Touched(dict[str, ServiceInstance | None]):
    """The instances a catalog write changed, by ID, for the refresh of the exported view:
    each with the instance as now stored where the write has it at hand, None where the
    refresh must read it back (or finds it gone).

    With the services they were in before the write or are in after it, for the blocking
    queries to wake by: ``mark`` records both at once, so an instance is never touched
    without its services (``wake`` falls back to every local query should one be).
    """

    def __init__(self) -> None:
        super().__init__()
        self.services: set[str] = set()
        self._unnamed = False

    def mark(self, service_id: str, instance: ServiceInstance | None, *services: str) -> None:
        self[service_id] = instance
        self.services.update(services)
        self._unnamed |= not services

    def wake(self) -> Wake:
        """The local queries this write may have changed the answer of."""
        if self._unnamed or not self:
            return LOCAL
        return Wake(None, frozenset(self.services))


def _wire_to_local(key: str) -> str:
    return key.removeprefix(INSTANCE_KEY_PREFIX)


class PeeringTables:
    """Mixin of agent.store.Store: the methods that persist peerings and stream cursors."""

    _write: Callable[..., int]  # Store._write(apply(conn, index, touched), exported=...)
    _read: Callable[[], AbstractContextManager[sqlite3.Connection]]
    # Store's: keep its in-memory imported view in step with an importer's batch.
    _imported_applied: Callable[
        [str, list[ServiceInstance], list[str], bool], frozenset[str] | None
    ]

    # --- peerings --------------------------------------------------------------------------

    def save_peering(self, record: PeeringRecord) -> PeeringRecord:
        """Insert or replace a peering; returns it with its new ModifyIndex."""
        saved: list[PeeringRecord] = []

        def apply(conn: sqlite3.Connection, index: int, _touched: Touched) -> bool:
            updated = msgspec.structs.replace(
                record, CreateIndex=record.CreateIndex or index, ModifyIndex=index
            )
            conn.execute(
                "INSERT OR REPLACE INTO peerings (name, peering_id, body) VALUES (?, ?, ?)",
                (record.Name, record.ID, _encoder.encode(updated)),
            )
            saved.append(updated)
            return True

        self._write(apply, exported="none")
        return saved[0]

    def load_peerings(self) -> list[PeeringRecord]:
        with self._read() as conn:
            rows = conn.execute("SELECT body FROM peerings ORDER BY name").fetchall()
        return [_record_decoder.decode(r[0]) for r in rows]

    def forget_peering(self, name: str, peering_id: str) -> None:
        """Remove a peering with its cursors and everything imported from it."""

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            conn.execute("DELETE FROM peerings WHERE name = ?", (name,))
            conn.execute("DELETE FROM publisher WHERE peering_id = ?", (peering_id,))
            conn.execute("DELETE FROM published WHERE peering_id = ?", (peering_id,))
            conn.execute("DELETE FROM publisher_seq_ceiling WHERE peering_id = ?", (peering_id,))
            conn.execute("DELETE FROM import_cursor WHERE peering_id = ?", (peering_id,))
            conn.execute("DELETE FROM imported WHERE peer = ?", (name,))
            conn.execute("DELETE FROM imported_peers WHERE peer = ?", (name,))
            return True

        self._write(apply, exported="none", rewrites_imported_of=name)

    # --- small counters (bootstrap topic position) ----------------------------------------

    def get_counter(self, key: str) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"c:{key}",)).fetchone()
        return int(row[0]) if row else 0

    def set_counter(self, key: str, value: int) -> None:
        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"c:{key}", value),
            )
            return False  # not part of the catalog: the index does not move

        self._write(apply, exported="none")

    # --- exporter --------------------------------------------------------------------------

    def load_publisher(self, peering_id: str, initial_keyring: StreamKeyring) -> PublisherCursor:
        with self._read() as conn:
            row = conn.execute(
                "SELECT epoch, next_seq, feed_seq, acked_end, keyring FROM publisher"
                " WHERE peering_id = ?",
                (peering_id,),
            ).fetchone()
            # A persistent map from the start, as the reducer keeps it (see PublisherState).
            published: immutables.Map[str, str] = immutables.Map(
                conn.execute(
                    "SELECT key, fingerprint FROM published WHERE peering_id = ?", (peering_id,)
                ).fetchall()
            )
            ceiling_row = conn.execute(
                "SELECT ceiling FROM publisher_seq_ceiling WHERE peering_id = ?", (peering_id,)
            ).fetchone()
        ceiling = ceiling_row[0] if ceiling_row is not None else 0
        if row is None:
            return PublisherCursor(
                state=PublisherState(), keyring=initial_keyring, seq_ceiling=ceiling
            )
        state = PublisherState(Epoch=row[0], NextSeq=row[1], Published=published)
        return PublisherCursor(
            state=state,
            keyring=_keyring_decoder.decode(row[4]),
            feed_seq=row[2],
            acked_end=row[3],
            seq_ceiling=ceiling,
        )

    def save_publisher(
        self,
        peering_id: str,
        cursor: PublisherCursor,
        fingerprints: dict[str, str | None] | None = None,
        *,
        durable: bool = True,
    ) -> None:
        """Persist the cursor; ``fingerprints`` updates (None removes) published keys.

        Called before producing when a batch needs a new Seq block or new keys (no
        fingerprints; always durable: a Seq must never be reused after a power loss, and
        records under a new epoch need its keyring) and after the broker acknowledged
        (fingerprints, feed position, acked end offset; ``durable=False`` is safe there, see
        Store._write: losing it rolls back to the last durable write, whose Seq ceiling still
        covers every produced Seq, and the restart reconcile republishes what the lost
        fingerprints miss).
        """
        changes = dict(fingerprints or {})

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            conn.execute(
                "INSERT INTO publisher"
                " (peering_id, epoch, next_seq, feed_seq, acked_end, keyring)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (peering_id) DO UPDATE SET"
                " epoch = excluded.epoch, next_seq = excluded.next_seq,"
                " feed_seq = excluded.feed_seq, acked_end = excluded.acked_end,"
                " keyring = excluded.keyring",
                (
                    peering_id,
                    cursor.state.Epoch,
                    cursor.state.NextSeq,
                    cursor.feed_seq,
                    cursor.acked_end,
                    _encoder.encode(cursor.keyring),
                ),
            )
            conn.execute(
                "INSERT INTO publisher_seq_ceiling (peering_id, ceiling) VALUES (?, ?)"
                " ON CONFLICT (peering_id) DO UPDATE SET ceiling = excluded.ceiling",
                (peering_id, cursor.seq_ceiling),
            )
            conn.executemany(
                "DELETE FROM published WHERE peering_id = ? AND key = ?",
                [(peering_id, k) for k, fp in changes.items() if fp is None],
            )
            conn.executemany(
                "INSERT INTO published (peering_id, key, fingerprint) VALUES (?, ?, ?)"
                " ON CONFLICT (peering_id, key) DO UPDATE SET fingerprint = excluded.fingerprint",
                [(peering_id, k, fp) for k, fp in changes.items() if fp is not None],
            )
            return False

        self._write(apply, exported="none", durable=durable)

    # --- importer --------------------------------------------------------------------------

    def load_import(
        self, peer: str, peering_id: str, initial_keyring: StreamKeyring
    ) -> ImportCursor:
        """The importer's cursor with the imported instances keyed as on the wire."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT state, keyring FROM import_cursor WHERE peering_id = ?", (peering_id,)
            ).fetchone()
            bodies = conn.execute("SELECT body FROM imported WHERE peer = ?", (peer,)).fetchall()
        loaded = (_instance_decoder.decode(b[0]) for b in bodies)
        instances = immutables.Map((instance_key(inst.ID), inst) for inst in loaded)
        if row is None:
            return ImportCursor(state=ImportState(Instances=instances), keyring=initial_keyring)
        state = _import_state_decoder.decode(row[0])
        return ImportCursor(
            state=msgspec.structs.replace(state, Instances=instances),
            keyring=_keyring_decoder.decode(row[1]),
        )

    def commit_import(
        self,
        peer: str,
        peering_id: str,
        cursor: ImportCursor,
        upserts: Iterable[ServiceInstance],
        removed_keys: Iterable[str],
        *,
        replace_all: bool = False,
        staged_index: int | None = None,
    ) -> int:
        """Apply imported changes and the new cursor in one transaction.

        With ``replace_all`` the peer's imported set becomes exactly ``upserts`` (resync swap).
        ``staged_index``: the batch went through ``Store.stage_import`` first, which handed
        out this index and already answered the readers.
        Not fsync'd (``durable=False``): a power loss rolls back the records and the offset
        together, and the importer reads them again from the topic (see Store._write).
        """
        ups = list(upserts)
        removed = [_wire_to_local(k) for k in removed_keys]
        # Without the instances (they are rows of ``imported``; msgspec cannot encode the map).
        state_body = _encoder.encode(msgspec.structs.replace(cursor.state, Instances={}))
        keyring_body = _encoder.encode(cursor.keyring)

        def apply(conn: sqlite3.Connection, _index: int, _touched: Touched) -> bool:
            conn.execute(
                "INSERT INTO import_cursor (peering_id, state, keyring) VALUES (?, ?, ?)"
                " ON CONFLICT (peering_id) DO UPDATE SET"
                " state = excluded.state, keyring = excluded.keyring",
                (peering_id, state_body, keyring_body),
            )
            conn.execute(
                "INSERT OR IGNORE INTO imported_peers (peer, stale) VALUES (?, 0)", (peer,)
            )
            changed = False
            if replace_all:
                changed = conn.execute("DELETE FROM imported WHERE peer = ?", (peer,)).rowcount > 0
            for inst in ups:
                upsert_imported(
                    conn, peer, catalog.instance_key(inst), inst.Name, _encoder.encode(inst)
                )
                changed = True
            for key in removed:
                cur = conn.execute("DELETE FROM imported WHERE peer = ? AND key = ?", (peer, key))
                changed |= cur.rowcount > 0
            return changed

        if replace_all:
            return self._write(apply, exported="none", durable=False, rewrites_imported_of=peer)
        return self._write(
            apply,
            exported="none",
            durable=False,
            staged_index=staged_index,
            after_commit=lambda: imported(
                peer, self._imported_applied(peer, ups, removed, staged_index is not None)
            ),
        )
