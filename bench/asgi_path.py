"""Where a register's time goes in the HTTP stack, layer by layer, before the store runs.

    .venv/bin/python bench/asgi_path.py [--requests 300] [--pause 0.02]

Calls the agent's ASGI app in process (no socket, no uvicorn) with `PUT
/v1/agent/service/register` against a real store, and stamps each layer's entry on the way
in: Starlette, its error middleware, the agent's metrics and peer-prefix middlewares,
Starlette's exception middleware, the router, the route, the handler, the body read, the
registration's decoding and the store's register call. Each figure is the median time from
the previous stamp, back to back and after ``--pause`` seconds idle (the state a change
finds the agent in on the benchmark's path). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import starlette.applications
import starlette.middleware.errors
import starlette.middleware.exceptions
import starlette.routing

import agent.httpapi as httpapi
from agent.catalog import ExportedService, ExportedServicesEntry, ServiceConsumer
from agent.config import AgentConfig
from agent.notifier import IndexNotifier
from agent.store import Store

stamps: list[tuple[str, int]] = []


def stamp_async(owner: Any, attr: str, label: str) -> None:
    """Stamp ``label`` when ``owner.attr`` (a coroutine function) is entered."""
    wrapped = getattr(owner, attr)

    @functools.wraps(wrapped)
    async def call(*args: Any, **kwargs: Any) -> Any:
        stamps.append((label, time.perf_counter_ns()))
        return await wrapped(*args, **kwargs)

    setattr(owner, attr, call)


def stamp_sync(owner: Any, attr: str, label: str) -> None:
    wrapped = getattr(owner, attr)

    @functools.wraps(wrapped)
    def call(*args: Any, **kwargs: Any) -> Any:
        stamps.append((label, time.perf_counter_ns()))
        return wrapped(*args, **kwargs)

    setattr(owner, attr, call)


LAYERS = [
    (starlette.applications.Starlette, "__call__", "Starlette app"),
    (starlette.middleware.errors.ServerErrorMiddleware, "__call__", "ServerErrorMiddleware"),
    (httpapi.MetricsMiddleware, "__call__", "MetricsMiddleware"),
    (httpapi.PeerPrefixMiddleware, "__call__", "PeerPrefixMiddleware"),
    (starlette.middleware.exceptions.ExceptionMiddleware, "__call__", "ExceptionMiddleware"),
    (starlette.routing.Router, "__call__", "Router"),
    (starlette.routing.Route, "handle", "Route.handle (after matching)"),
    (httpapi.Api, "register", "handler (Request built)"),
    (httpapi, "read_json", "read_json"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.02)
    args = parser.parse_args()
    for owner, attr, label in LAYERS:
        stamp_async(owner, attr, label)
    stamp_sync(httpapi.catalog, "decode_registration", "decode_registration (body read)")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        try:
            consumer = (ServiceConsumer("west"),)
            entry = ExportedServicesEntry(
                Kind="exported-services", Services=(ExportedService("bench", consumer),)
            )
            store.set_exported_services(entry)
            stamp_sync(store, "register", "store.register (decoded)")
            asyncio.run(measure(store, args.requests, args.pause))
        finally:
            store.close()


async def measure(store: Store, requests: int, pause: float) -> None:
    notifier = IndexNotifier()
    notifier.bind(store.index)
    config = AgentConfig(name="east", kafka=("127.0.0.1:9092",))
    app = httpapi.create_app(store, notifier, config)
    body = json.dumps({"Name": "bench", "ID": "bench-1", "Port": 1}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        pass

    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for state, wait in (("back to back", 0.0), (f"after {pause * 1000:g} ms idle", pause)):
        for _ in range(requests):
            if wait:
                await asyncio.sleep(wait)
            stamps.clear()
            started = time.perf_counter_ns()
            await app(_scope(len(body)), receive, send)
            previous = started
            for label, at in stamps:
                rows[label][state].append((at - previous) / 1000)
                previous = at
                if label.startswith("store.register"):
                    break
            rows["app entry to store.register"][state].append((previous - started) / 1000)
    states = ["back to back", f"after {pause * 1000:g} ms idle"]
    print(
        f"{'layer (time since the previous stamp, median µs)':<52}"
        + "".join(f"{s:>22}" for s in states)
    )
    for label, by_state in rows.items():
        figures = "".join(f"{statistics.median(by_state[s]):>22.1f}" for s in states)
        print(f"{label:<52}{figures}")


def _scope(length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": "/v1/agent/service/register",
        "raw_path": b"/v1/agent/service/register",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"east"), (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }


if __name__ == "__main__":
    main()
