"""The agent's essential work on a change's path, without the agent around it: roles of
bench/skeleton.py (``--role essentials-exporter`` / ``essentials-importer``).

The skeleton (bench/skeleton.py) hands bytes from one socket to the next. The agents add
everything else. This pair sits between them: the skeleton's two processes plus only the
work the design promises cannot do without, done with the agent's own code, and nothing of
its framework:

- the exporting one answers ``PUT /v1/agent/service/register`` as a plain ASGI callable: the
  registration decoded and validated (``catalog.decode_registration``), the store's write
  with its exported view and feed row (``Store.register``, the agent's SQLite schema,
  committed without the fsync as ``Api.write`` does), the event encoded and sealed
  (``wire.envelope.encode_event``) and handed to the producer, one loop turn for the producer
  to put it on the socket, then the fsync, then the answer. No Starlette, middleware,
  metrics, exporter task, feed read, publisher state or bookkeeping after the ack;
- the importing one follows the topic and folds each batch with the agent's reducer
  (``reducer.ingest``: record key check, decryption, decoding, the fold), keeps the latest
  instances by service name, answers ``GET /v1/health/service/<name>`` blocking queries from
  them, and commits the batch with the agent's ``Store.commit_import`` after the answer (one
  loop turn later, as the importer does). No Starlette, middleware, metrics, imported view,
  notifier or gauges.

So where the agents land against the skeleton and this pair says how much of their extra is
the work itself and how much is the code around it. ``--essentials-without`` leaves pieces
of the work out, to weigh each: ``write`` (the store's write and its fsync), ``fsync`` (only
the fsync), ``commit`` (the importer's commit). Nothing is asserted.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from plain_asgi import (
    JSON,
    ChangeIndex,
    Receive,
    Scope,
    Send,
    answer,
    answer_other,
    health_query,
    read_body,
)

from agent import catalog, crypto, kafka_client, reducer
from agent.catalog import ExportedService, ExportedServicesEntry, ServiceConsumer
from agent.model import ServiceInstance
from agent.store import Store
from agent.store_peering import ImportCursor
from agent.wire.envelope import encode_event
from agent.wire.events import InstanceUpsert, instance_key
from agent.wire.keys import FIRST_EPOCH, Direction, new_keyring

TOPIC = "bench-essentials"
LEAVE_OUT = ("write", "fsync", "commit")
PEER = "west"
PEERING_ID = "bench-essentials-peering"
# Both ends derive the same stream keys; a real handshake is not on a change's path.
KEYRING = new_keyring(b"bench-essentials-root-secret-32b", PEERING_ID, Direction.ACCEPTOR_TO_DIALER)


class ExporterEssentials:
    """PUT register: decode, the store's write, seal, produce, fsync, answer."""

    def __init__(self, producer: Any, store: Store, service: str, without: frozenset[str]) -> None:
        self.producer = producer
        self.store = store
        self.write = "write" not in without
        self.fsync = self.write and "fsync" not in without
        self.next_seq = 1
        entry = ExportedServicesEntry(
            Kind="exported-services",
            Services=(ExportedService(service, (ServiceConsumer(PEER),)),),
        )
        store.set_exported_services(entry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT" and scope["path"] == "/v1/agent/service/register":
            instance = catalog.decode_registration(msgspec.json.decode(await read_body(receive)))
            now = time.time()
            if self.write:
                self.store.register(instance, "api", now, durable=False)
            event = InstanceUpsert(
                Epoch=FIRST_EPOCH,
                Seq=self.next_seq,
                SentAt=now,
                Key=instance_key(instance.ID),
                Instance=instance,
                ChangedAt=now,
            )
            self.next_seq += 1
            key, value = encode_event(KEYRING, event)
            await self.producer.send(TOPIC, value=value, key=key)
            await anyio.lowlevel.checkpoint()  # the sender puts it on the socket first
            if self.fsync:
                self.store.sync()
            await answer(send, 200, b"true", [JSON])
        else:
            await answer_other(scope, send)


class _Node(msgspec.Struct):
    Node: str
    Address: str
    Datacenter: str = "dc1"


class _HealthEntry(msgspec.Struct):
    Node: _Node
    Service: ServiceInstance
    Checks: list[Any]


_encoder = msgspec.json.Encoder()


class ImporterEssentials:
    """Folds the stream with the agent's reducer; GET health answers from the result."""

    def __init__(self, store: Store, without: frozenset[str]) -> None:
        self.store = store
        self.commit = "commit" not in without
        self.private_key = crypto.generate_private_key()
        self.cursor = ImportCursor(state=reducer.ImportState(), keyring=KEYRING)
        self.by_name: dict[str, dict[str, ServiceInstance]] = {}
        self.index = ChangeIndex()

    async def follow(self, bootstrap: str, idle_fetch_wait: float) -> None:
        batches = kafka_client.read_batches(
            bootstrap, TOPIC, stop_at_end=False, poll_interval=idle_fetch_wait
        )
        async for batch in batches:
            if not batch.records:
                continue
            ingested = reducer.ingest(
                [(r.offset, r.key, r.value) for r in batch.records],
                self.cursor.keyring,
                self.private_key,
                time.time(),
                self.cursor.state,
            )
            upserts = [
                effect.instance
                for _offset, effects in ingested.effects
                for effect in effects
                if isinstance(effect, reducer.Upserted)
            ]
            for instance in upserts:
                self.by_name.setdefault(instance.Name, {})[instance.ID] = instance
            self.cursor = ImportCursor(state=ingested.state, keyring=ingested.keyring)
            self.index.bump()
            await anyio.lowlevel.checkpoint()  # the woken queries answer before the commit
            if self.commit:
                self.store.commit_import(PEER, PEERING_ID, self.cursor, upserts, [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = await health_query(scope, self.index)
        if name is None:
            await answer_other(scope, send)
            return
        node = _Node(Node=PEER, Address="")
        entries = [_HealthEntry(node, i, []) for i in self.by_name.get(name, {}).values()]
        await answer(send, 200, _encoder.encode(entries), [JSON, self.index.header()])


async def run_role(
    role: str,
    bootstrap: str,
    serve: Callable[[Any], Awaitable[None]],
    service: str,
    idle_fetch_wait: float,
    without: frozenset[str],
) -> None:
    """One essentials process: its own data dir (removed on exit), then serve."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-essentials-"))
    store = Store.open(data_dir)
    try:
        if role == "essentials-exporter":
            async with kafka_client.producer(bootstrap) as producer:
                await serve(ExporterEssentials(producer, store, service, without))
        else:
            app = ImporterEssentials(store, without)
            async with anyio.create_task_group() as group:
                group.start_soon(app.follow, bootstrap, idle_fetch_wait)
                await serve(app)
                group.cancel_scope.cancel()
    finally:
        store.close()
        shutil.rmtree(data_dir, ignore_errors=True)
