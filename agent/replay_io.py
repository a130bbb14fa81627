"""Where replay gets its bytes: Kafka (no consumer group), dump files, keys from a data dir.

Read-only by construction: the data dir's SQLite file is opened with ``mode=ro`` (SQLite
itself refuses any write, and WAL lets us read while the agent runs), Kafka is read with an
assigned partition and no group (nothing is committed, nothing produced), and the only files
written are the ones the user names with ``--out``.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import anyio
import msgspec

from agent import kafka_client
from agent.kafka_client import KafkaSettings
from agent.peering.records import PeeringRecord
from agent.replay import (
    DumpHeader,
    KeyFile,
    RawRecord,
    ReplayError,
    check_header,
    check_key_file,
    merge_keyrings,
)
from agent.store import DB_FILE, Store, StoreError

# --- keys from the agent's data dir -----------------------------------------------------------


def open_data_dir(data_dir: Path) -> Store:
    try:
        return Store.open_readonly(data_dir)
    except StoreError as exc:
        raise ReplayError(str(exc)) from None
    except sqlite3.Error as exc:
        raise ReplayError(f"cannot open {data_dir / DB_FILE} read-only: {exc}") from None


def find_peering(store: Store, peer: str) -> PeeringRecord:
    try:
        records = store.load_peerings()
    except sqlite3.Error as exc:
        raise ReplayError(f"cannot read peerings: {exc}") from None
    for record in records:
        if record.Name == peer:
            return record
    known = ", ".join(r.Name for r in records) or "none"
    raise ReplayError(f"no peering named {peer!r} in this data dir (known: {known})")


def keys_from_data_dir(data_dir: Path, peer: str) -> tuple[KeyFile, KafkaSettings]:
    """The peering's keys (every epoch known locally) and its Kafka settings."""
    store = open_data_dir(data_dir)
    try:
        record = find_peering(store, peer)
        if record.ImportKeyring is None or record.ExportKeyring is None:
            raise ReplayError(f"peering {peer!r} is {record.state.value}: it has no stream keys")
        live_import = store.load_import(record.Name, record.ID, record.ImportKeyring).keyring
        live_export = store.load_publisher(record.ID, record.ExportKeyring).keyring
    finally:
        store.close()
    key_file = KeyFile(
        PeeringID=record.ID,
        Peer=record.Name,
        Bootstrap=record.Kafka.bootstrap,
        BootstrapTopic=record.BootstrapTopic,
        ImportTopic=record.import_topic,
        ExportTopic=record.export_topic,
        ImportKeyring=merge_keyrings(record.ImportKeyring, live_import),
        ExportKeyring=merge_keyrings(record.ExportKeyring, live_export),
        PrivateKey=record.PrivateKey,
    )
    return key_file, record.Kafka


def read_key_file(path: Path) -> KeyFile:
    try:
        key_file = msgspec.json.decode(path.read_bytes(), type=KeyFile)
    except OSError as exc:
        raise ReplayError(f"cannot read key file {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ReplayError(f"{path} is not a valid key file: {exc}") from None
    check_key_file(key_file)
    return key_file


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, even briefly)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode with O_CREAT: force it
        os.write(fd, data)
    finally:
        os.close(fd)


# --- records from Kafka -----------------------------------------------------------------------


def end_offset(kafka: KafkaSettings, topic: str) -> int:
    return anyio.run(kafka_client.end_offset, kafka, topic)


def read_kafka(
    kafka: KafkaSettings,
    topic: str,
    *,
    last_offset: int | None = None,
) -> Iterator[RawRecord]:
    """Records of partition 0 from the beginning to the end offset seen at the start (or to
    ``last_offset``), streamed from a reader thread through a bounded queue. No consumer
    group: nothing is committed, the agent's own position is untouched."""
    batches: queue.Queue[list[RawRecord] | BaseException | None] = queue.Queue(maxsize=8)
    stop = threading.Event()

    def put(item: list[RawRecord] | BaseException | None) -> None:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    async def pump() -> None:
        async for batch in kafka_client.read_batches(kafka, topic, stop_at_end=True):
            records = [
                RawRecord(r.offset, r.timestamp_ms, r.key, r.value)
                for r in batch.records
                if last_offset is None or r.offset <= last_offset
            ]
            put(records)
            if stop.is_set() or (
                last_offset is not None
                and batch.records
                and batch.records[-1].offset >= last_offset
            ):
                return

    def run() -> None:
        try:
            anyio.run(pump)
        except BaseException as exc:  # handed to the consumer thread, which raises it
            put(exc)
        else:
            put(None)

    thread = threading.Thread(target=run, name="replay-kafka-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                if isinstance(item, kafka_client.KafkaError | OSError | TimeoutError):
                    raise ReplayError(f"reading {topic} failed: {item!r}") from item
                raise item
            yield from item
    finally:
        stop.set()
        thread.join(timeout=10)


# --- dump files -----------------------------------------------------------------------------

_header_decoder = msgspec.json.Decoder(DumpHeader)
_record_decoder = msgspec.json.Decoder(RawRecord)
_encoder = msgspec.json.Encoder()


def write_dump(out: IO[bytes], header: DumpHeader, records: Iterator[RawRecord]) -> int:
    """Write the header line and one line per record; returns the record count."""
    out.write(_encoder.encode(header) + b"\n")
    count = 0
    for record in records:
        out.write(_encoder.encode(record) + b"\n")
        count += 1
    return count


def read_dump_header(path: Path) -> DumpHeader:
    try:
        with path.open("rb") as f:
            first = f.readline()
    except OSError as exc:
        raise ReplayError(f"cannot read dump {path}: {exc.strerror}") from None
    try:
        header = _header_decoder.decode(first)
    except msgspec.DecodeError as exc:
        raise ReplayError(f"{path} has no valid dump header: {exc}") from None
    check_header(header)
    return header


def read_dump(path: Path) -> Iterator[RawRecord]:
    """The records of a dump file, streamed; a damaged line is a clear error with its number."""
    read_dump_header(path)
    with path.open("rb") as f:
        f.readline()
        for number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                record = _record_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ReplayError(f"{path}:{number}: not a dump record: {exc}") from None
            yield record
