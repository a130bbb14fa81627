"""Where the HTTP API's store calls run: small writes on the event loop, but never waiting
there for a bulk write that holds the store (a services file or a config entry over the
whole catalog can hold it for seconds); the agent keeps answering meanwhile."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import httpx
import pytest

from agent.config import AgentConfig
from agent.httpapi import create_app
from agent.store import IndexNotifier, Store


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

        def on_change(index: int) -> None:
            order.append("commit")
            notifier.notify(index)
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
