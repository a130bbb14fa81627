"""The few ASGI pieces the benchmark's bare servers share (bench/skeleton.py and
bench/essentials.py): no framework, so nothing but the work each measures is on the path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = (b"content-type", b"application/json")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def answer_other(scope: Scope, send: Send) -> None:
    """Any other request: 200 for ``/v1/status/leader`` (what a starting benchmark polls
    until the process serves), 404 for the rest."""
    await answer(send, 200 if scope["path"] == "/v1/status/leader" else 404, b"", [])


class ChangeIndex:
    """An index that moves with each change, for blocking queries: ``?index=N`` waits until
    it is past N (at most 10 s, a watcher's ``wait``)."""

    def __init__(self) -> None:
        self.value = 1
        self._changed = anyio.Event()

    def bump(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_past(self, query_string: bytes) -> None:
        query = parse_qs(query_string.decode())
        if "index" in query:
            with anyio.move_on_after(10):
                while self.value <= int(query["index"][0]):
                    await self._changed.wait()

    def header(self) -> tuple[bytes, bytes]:
        return (b"x-consul-index", str(self.value).encode())


HEALTH_PREFIX = "/v1/health/service/"


async def health_query(scope: Scope, index: ChangeIndex) -> str | None:
    """The service name of a ``GET /v1/health/service/<name>`` request, once a blocking query
    has waited for its ``?index`` to pass; None for any other request."""
    path: str = scope["path"]
    if not path.startswith(HEALTH_PREFIX):
        return None
    await index.wait_past(scope["query_string"])
    return path[len(HEALTH_PREFIX) :]
