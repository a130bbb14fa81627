"""Where the HTTP API's store calls run: small writes on the event loop, but never waiting
there for a bulk write that holds the store (a services file or a config entry over the
whole catalog can hold it for seconds); the agent keeps answering meanwhile. And in what
order a write's consequences run: an API write's fsync after the exporters it woke, an
import's bookkeeping after the blocking queries it woke."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

from agent.config import AgentConfig
from agent.httpapi import create_app
from agent.kafka_client import KafkaSettings, Record
from agent.model import ServiceInstance
from agent.notifier import Change, IndexNotifier
from agent.peering.context import PeeringContext
from agent.peering.importer import Importer
from agent.peering.records import PeeringRecord
from agent.peering.tracker import PeeringTracker
from agent.peering_state import PeeringState, PeeringStatus, Role
from agent.reducer import PublisherState, publish_changes
from agent.store import Store
from agent.wire.envelope import encode_event
from tests.wire_helpers import NOW, PEERING_ID, Established


def test_a_write_during_a_bulk_write_waits_in_a_thread_not_on_the_loop(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    config = AgentConfig(name="alpha", kafka=("127.0.0.1:9092",))
    held, release = threading.Event(), threading.Event()

    def bulk_write() -> None:  # stands in for sync_file_services on 100k instances
        with store.writer_if_free() as free:
            assert free
            held.set()
            release.wait(10)

    async def scenario() -> tuple[bool, int]:
        notifier = IndexNotifier()
        notifier.bind(store.index)
        store.set_on_change(notifier.notify)
        app = create_app(store, notifier, config)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            # Uncontended: the write runs inline and is visible at once.
            first = await client.put("/v1/agent/service/register", json={"Name": "web"})
            assert first.status_code == 200
            bulk = threading.Thread(target=bulk_write)
            bulk.start()
            held.wait(5)
            registered: list[bool] = []

            async def register() -> None:
                answer = await client.put("/v1/agent/service/register", json={"Name": "db"})
                assert answer.status_code == 200
                registered.append(True)

            async with anyio.create_task_group() as group:
                group.start_soon(register)
                await anyio.sleep(0.2)
                leader = await client.get("/v1/status/leader")
                # Answered while the bulk write still holds the store: had the write waited
                # on the loop, nothing would answer until the bulk write gave up (10 s).
                answered_while_held = bulk.is_alive() and not release.is_set()
                assert leader.status_code == 200
                assert not registered, "the write went ahead while the bulk write held the store"
                release.set()
            bulk.join(5)
            services = await client.get("/v1/catalog/services")
            return answered_while_held, len(services.json())

    try:
        answered_while_held, services = anyio.run(scenario)
    finally:
        release.set()
        store.close()
    assert answered_while_held
    assert services == 2  # and the waiting write went ahead once the store was free


def test_an_api_write_is_seen_by_waiting_tasks_before_its_fsync_and_answered_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A register commits without the fsync, lets the tasks it woke run (an exporter
    produces then), fsyncs the WAL, and only then answers: durable before acknowledged,
    with the disk flush off the way to the peer."""
    store = Store.open(tmp_path)
    config = AgentConfig(name="alpha", kafka=("127.0.0.1:9092",))
    order: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        order.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    async def scenario() -> None:
        notifier = IndexNotifier()
        notifier.bind(store.index)
        committed = anyio.Event()

        def on_change(change: Change) -> None:
            order.append("commit")
            notifier.notify(change)
            committed.set()

        store.set_on_change(on_change)

        async def woken() -> None:  # stands in for an exporter woken by the commit
            await committed.wait()
            order.append("woken task ran")

        app = create_app(store, notifier, config)
        transport = httpx.ASGITransport(app=app)
        async with anyio.create_task_group() as group:
            group.start_soon(woken)
            async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
                answer = await client.put("/v1/agent/service/register", json={"Name": "web"})
                order.append(f"answer {answer.status_code}")

    try:
        anyio.run(scenario)
    finally:
        store.close()
    assert order == ["commit", "woken task ran", "fsync agent.db-wal", "answer 200"]


def _peering_and_records() -> tuple[PeeringRecord, list[Record]]:
    """A dialer's peering "east" and the records of one upsert of web-1 on its stream."""
    est = Established()
    status = PeeringStatus(
        Name="east", PeerRole=Role.DIALER, State=PeeringState.ACTIVE, StateSince=NOW
    )
    record = PeeringRecord(
        Name="east",
        ID=PEERING_ID,
        Status=status,
        CreatedAt=NOW,
        Kafka=KafkaSettings.plain("127.0.0.1:9092"),
        BootstrapTopic="bootstrap",
        PrivateKey=est.dialer_private,
        ImportKeyring=est.a2d,
        ExportKeyring=est.d2a,
    )
    upsert = ServiceInstance(ID="web-1", Name="web", Port=8080)
    _state, events = publish_changes(PublisherState(), [("instance/web-1", upsert, NOW)], NOW)
    records = [
        Record("stream", 0, offset, 0, *encode_event(est.a2d, event))
        for offset, event in enumerate(events)
    ]
    return record, records


def _importer_on_loop(
    store: Store, record: PeeringRecord, woken: Callable[[], object] = lambda: None
) -> tuple[Importer, IndexNotifier]:
    """An importer of ``record`` whose store wakes a notifier (``woken`` first) on each change;
    inside the event loop."""
    notifier = IndexNotifier()
    notifier.bind(store.index)
    tracker = PeeringTracker(store, lambda: NOW)
    tracker.put(record)
    ctx = PeeringContext(
        store, notifier, tracker, lambda: NOW, "west", record.Kafka, heartbeat_interval=1.0
    )
    store.set_on_change(lambda index: (woken(), notifier.notify(index)))
    return Importer(ctx, record), notifier


def _committed(store: Store) -> int:
    """Instances of "east" in the imported table (a read-only store reads the table)."""
    reader = Store.open_readonly(store.path.parent)
    try:
        return len(reader.imported_instances("east"))
    finally:
        reader.close()


def test_an_import_reaches_the_queries_it_woke_before_its_commit_and_bookkeeping(
    tmp_path: Path,
) -> None:
    """The importer primes the store's imported view with the set it loaded, puts each batch
    there first and yields: the blocking queries it woke answer from memory before the
    batch's commit and the importer's metrics and liveness bookkeeping (a watcher's way)."""
    store = Store.open(tmp_path)
    record, records = _peering_and_records()
    order: list[str] = []

    async def scenario() -> None:
        importer, notifier = _importer_on_loop(store, record, lambda: order.append("woken"))
        observe = importer._observe

        def bookkeeping(*args: Any) -> None:
            order.append(f"bookkeeping, committed {_committed(store)}")
            observe(*args)

        importer._observe = bookkeeping  # type: ignore[method-assign]
        woken = notifier.watch("east", "web")

        async def blocking_query() -> None:
            await woken.wait()
            answer = len(store.imported_instances("east", "web"))
            order.append(f"query answered {answer}, committed {_committed(store)}")

        async with anyio.create_task_group() as group:
            group.start_soon(blocking_query)
            await anyio.lowlevel.checkpoint()  # the query is waiting
            assert await importer.apply_batch(records)

    try:
        anyio.run(scenario)
    finally:
        store.close()
    assert order == [
        "woken",
        "query answered 1, committed 0",
        "woken",
        "bookkeeping, committed 1",
    ]


def test_an_importer_cancelled_between_its_stage_and_its_commit_leaves_no_trace(
    tmp_path: Path,
) -> None:
    """Cancelled at the turn of the loop after its batch reached the view, before the commit
    (the peering deleted, the agent stopping): readers see the table again, nothing of the
    batch, and the next write takes an index past the one handed out."""
    store = Store.open(tmp_path)
    record, records = _peering_and_records()
    seen: list[int] = []

    async def scenario() -> None:
        importer, notifier = _importer_on_loop(store, record)
        woken = notifier.watch("east", None)

        async def cancel_when_woken(group: anyio.abc.TaskGroup) -> None:
            await woken.wait()
            seen.append(notifier.index)
            seen.append(len(store.imported_instances("east")))
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_woken, group)
            await anyio.lowlevel.checkpoint()
            await importer.apply_batch(records)
            pytest.fail("the batch was committed")

    try:
        anyio.run(scenario)
        assert seen[1] == 1  # the staged batch was visible
        assert store.imported_instances("east") == []
        assert _committed(store) == 0
        assert store.register(ServiceInstance(ID="db-1", Name="db")) == seen[0] + 1
    finally:
        store.close()
