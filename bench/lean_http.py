"""The benchmark's HTTP/1.1 client for the requests on a change's path, with next to no cost
of its own: a request is bytes prepared before the clock starts, written to a kept-alive
connection; the answer is parsed by httptools (the C parser uvicorn uses on the server side).

Why: a Python client library spends more time than the agent's own steps on each request
right after its process slept (aiohttp: ~0.3 ms from the call to the request on the socket,
~0.17 ms to parse and decode an answer), and a watcher in Go, curl or Prometheus does not. The
propagation figure measures the agents, not the instrument; bench/latency.py still reports
what an aiohttp watcher sees, next to it.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

Origin = tuple[str, int]


class Prepared(NamedTuple):
    """A request ready to be written: where to, and its bytes."""

    origin: Origin
    raw: bytes


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def prepare(method: str, url: str, body: bytes | None = None) -> Prepared:
    """``method url`` with ``body`` (JSON) as the bytes of one HTTP/1.1 request."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected http://host:port/..., got {url!r}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return Prepared((parts.hostname, parts.port), (head + "\r\n").encode() + (body or b""))


class _Connection(asyncio.Protocol):
    """One kept-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body = {}, []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    async def request(self, raw: bytes) -> Answer:
        assert self.transport is not None, "not connected"
        assert self._waiter is None, "one request at a time"
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter


class LeanHttp:
    """Kept-alive connections per origin; concurrent requests each get their own."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}

    async def send(self, request: Prepared) -> Answer:
        idle = self._idle.setdefault(request.origin, [])
        while idle and idle[-1].closed:
            idle.pop()
        if idle:
            conn = idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _transport, conn = await loop.create_connection(_Connection, *request.origin)
        try:
            answer = await conn.request(request.raw)
        except BaseException:
            # Cancelled or failed mid-request: the connection's state is unknown.
            if conn.transport is not None:
                conn.transport.close()
            raise
        if answer.headers.get("connection", "").lower() != "close":
            idle.append(conn)
        return answer

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
