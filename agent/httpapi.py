"""The HTTP API: the only module that builds the ASGI app (Starlette, served by uvicorn).

Consul's paths, JSON field names and status codes, so Consul clients and Prometheus' Consul
service discovery work unchanged. Handlers are thin: decode and validate at the edge (pure
``catalog`` functions), call the store (see ``Api.write``), encode Structs.
Errors are plain-text bodies with a 4xx code, as Consul answers them.

Peering routes are not built here: ``create_app(..., extra_routes=[...])`` mounts the routes
the peering module builds (full-path ``Route`` objects, so metrics keep their templates), and
they may reuse ``ApiError``, ``read_json`` and ``json_response`` from this module.

``/peer/<name>/v1/...`` is an alias of ``/v1/...?peer=<name>`` for the read endpoints Consul
service discovery uses (PeerPrefixMiddleware), so Prometheus' ``consul_sd_configs`` with
``path_prefix: /peer/<name>`` discovers the services imported from that peer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote_plus

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent import __version__, catalog, metrics
from agent.catalog import CatalogError, ExportedServicesEntry
from agent.config import AgentConfig
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.names import InvalidName, validate_peer_name, validate_service_name
from agent.notifier import IndexNotifier
from agent.store import LocalInstance, Store, StoreError, write_on_loop

T = TypeVar("T")

DEFAULT_WAIT_SECONDS = 300.0  # Consul's default for blocking queries
MAX_WAIT_SECONDS = 600.0  # and its maximum
# Turns of the event loop between a write's commit and its fsync (Api.write): a woken
# exporter's produce request reaches the socket after its own task, aiokafka's sender and
# the sender's request task have run. Fewer only lets the fsync go first, as before.
EXPORTER_TURNS = 5

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """A request we refuse: ``status`` (4xx) and a one-line message for the body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- wire types (Consul's field names) ---------------------------------------------------


class Weights(msgspec.Struct, frozen=True):
    Passing: int = 1
    Warning: int = 1


class NodeView(msgspec.Struct, frozen=True):
    ID: str
    Node: str
    Address: str
    Datacenter: str
    TaggedAddresses: dict[str, str]
    Meta: dict[str, str]
    PeerName: str | msgspec.UnsetType = msgspec.UNSET


class AgentServiceView(msgspec.Struct, frozen=True):
    ID: str
    Service: str
    Tags: tuple[str, ...]
    Meta: dict[str, str]
    Port: int
    Address: str
    Weights: Weights
    EnableTagOverride: bool
    Datacenter: str
    PeerName: str | msgspec.UnsetType = msgspec.UNSET


class CheckView(msgspec.Struct, frozen=True):
    Node: str
    CheckID: str
    Name: str
    Status: str
    Notes: str
    Output: str
    ServiceID: str
    ServiceName: str
    ServiceTags: tuple[str, ...]
    Type: str
    PeerName: str | msgspec.UnsetType = msgspec.UNSET


class HealthEntry(msgspec.Struct, frozen=True):
    Node: NodeView
    Service: AgentServiceView
    Checks: tuple[CheckView, ...]


class CatalogEntry(msgspec.Struct, frozen=True):
    ID: str
    Node: str
    Address: str
    Datacenter: str
    TaggedAddresses: dict[str, str]
    NodeMeta: dict[str, str]
    ServiceID: str
    ServiceName: str
    ServiceAddress: str
    ServiceTags: tuple[str, ...]
    ServiceMeta: dict[str, str]
    ServicePort: int
    ServiceWeights: Weights
    ServiceEnableTagOverride: bool
    CreateIndex: int
    ModifyIndex: int
    PeerName: str | msgspec.UnsetType = msgspec.UNSET


class AgentSelfConfig(msgspec.Struct, frozen=True):
    Datacenter: str
    NodeName: str
    NodeID: str
    Version: str
    Server: bool


class AgentSelfMember(msgspec.Struct, frozen=True):
    Name: str
    Addr: str
    Port: int
    Tags: dict[str, str]
    Status: int


class KafkaStatusView(msgspec.Struct, frozen=True):
    """One Kafka cluster the agent uses, as its last request found it."""

    Connected: bool
    Since: float


class AgentSelf(msgspec.Struct, frozen=True):
    Config: AgentSelfConfig
    Member: AgentSelfMember
    Meta: dict[str, str]
    # Not in Consul: whether each Kafka cluster is reachable (graceful degradation shows
    # here), keyed by its first bootstrap server. An object, not a list: Consul clients (and
    # Prometheus' Consul SD) decode every top-level value of /v1/agent/self as a map.
    Kafka: dict[str, KafkaStatusView] = msgspec.field(default_factory=dict)


class CheckUpdate(msgspec.Struct, frozen=True):
    """Body of ``PUT /v1/agent/check/update/{id}``."""

    Status: CheckStatus
    Output: str = ""


# --- helpers other route modules may reuse -----------------------------------------------


def index_headers(index: int) -> dict[str, str]:
    """What Consul sends with every catalog read."""
    return {
        "X-Consul-Index": str(index),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
    }


# A route's answer sent without a Response object (see RawEndpoint): status, body, headers.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_JSON = (b"content-type", b"application/json")


def index_answer(body: bytes, index: int) -> Answer:
    """A catalog read's JSON answer with Consul's index headers."""
    headers = [(b"content-length", str(len(body)).encode()), _JSON]
    headers += [(k.lower().encode(), v.encode()) for k, v in index_headers(index).items()]
    return 200, body, headers


def empty_ok() -> Answer:
    """200 with no body. A new header list for each answer: middlewares may edit it in place
    (Starlette's MutableHeaders does), so one shared list could carry a header into the next."""
    return 200, b"", [(b"content-length", b"0")]


class RawEndpoint:
    """A route's handler called as a plain ASGI app: the register and the reads blocking
    queries wait on, among them the two routes on a change's way from one cluster to the
    other (the register, the health query watchers block on).

    Starlette wraps a function or method endpoint in a Request, a per-route exception
    wrapper with its own send wrapper, and a Response object; it calls any other callable
    as an ASGI app. Right after the process slept each such layer costs tens of µs, on
    both agents of the path. The handler still takes a Request (cheap to build) and raises
    ApiError as every handler does: the app's ExceptionMiddleware answers it.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Answer]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = await self.handler(Request(scope, receive))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def json_response(value: Any, status: int = 200, index: int | None = None) -> Response:
    """Encode ``value`` (Structs, lists, dicts) as JSON; set X-Consul-Index when given."""
    headers = {} if index is None else index_headers(index)
    return Response(_encoder.encode(value), status, headers=headers, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body too large: {declared} bytes, limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body too large: over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """Decode a JSON body to plain values; malformed JSON is a 400."""
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "request body is empty: expected a JSON object")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        # msgspec decodes recursively; a body nested deeper than the stack is an attack or
        # a bug on the client's side, never a catalog entry.
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def convert(value: Any, type_: type[T], what: str) -> T:
    """Plain decoded JSON -> Struct; wrong types are a 400 naming the field."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid {what}: {exc}") from None


# --- the app ---------------------------------------------------------------------------------


class MetricsMiddleware:
    """Counts every request by route template, method and status code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        answered = False
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
            if not answered:
                status = 499  # ended without an answer: its client went away (ClientGone...)
        except anyio.get_cancelled_exc_class():
            # The client went away (or the server is stopping) before an answer: nginx's 499.
            status = 499
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "?")
            metrics.HTTP_REQUESTS.labels(template, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(template, method).observe(time.perf_counter() - started)


# --- blocking queries whose client went away ------------------------------------------------


def is_blocking_query(scope: Scope) -> bool:
    """A GET with ``?index=``: it may wait up to ``?wait`` (at most 10 minutes)."""
    if scope["method"] != "GET":
        return False
    return any(part.startswith(b"index=") for part in scope["query_string"].split(b"&"))


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class ClientGoneMiddleware:
    """Ends a blocking query as soon as its client disconnects; counts the open ones.

    uvicorn does not cancel a request whose client went away: a blocking query noticed only
    when it answered, up to ``?wait`` later, holding its task, its connection's state and a
    read on every change of its service meanwhile. Consul cancels such a query at once.
    Only these requests get the extra task that listens for the disconnect, and it is torn
    down after the answer is sent, off the answer's way. A GET carries no body, so the
    listener takes the receive channel and the handler gets an empty body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_blocking_query(scope):
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_wrapper(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True  # uvicorn reports a completed answer as a disconnect too
            await send(message)

        async def cancel_when_gone(scope: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not answered:
                scope.cancel()

        metrics.HTTP_BLOCKING_QUERIES.inc()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_gone, group.cancel_scope)
                await self.app(scope, _no_body, send_wrapper)
                group.cancel_scope.cancel()
        finally:
            metrics.HTTP_BLOCKING_QUERIES.dec()


# --- /peer/<name>/... : a peer's imported catalog under a path prefix -----------------------

PEER_PREFIX = "/peer/"
# The read endpoints Consul service discovery (Prometheus' consul_sd_configs with
# ``path_prefix``) and Consul clients use; each is served as ``/v1/...?peer=<name>``.
_PEER_READS = re.compile(
    r"/v1/(?:agent/self|status/leader|catalog/services|(?:catalog|health)/service/[^/]+)"
)
_READ_METHODS = ("GET", "HEAD")


def peer_prefix_rewrite(path: str, method: str, query: bytes) -> tuple[str, str, bytes]:
    """``/peer/<name>/v1/...`` -> (peer, ``/v1/...``, query with ``peer=<name>``).

    Pure, so the routing rules are testable without a server. Raises ApiError: 404 for a
    path outside the aliased read endpoints, 405 for any write, 400 for an invalid peer name
    (the same message as ``?peer=``) or a ``?peer=`` that names another peer. An unknown but
    valid peer behaves exactly as ``?peer=`` does: an empty imported catalog.
    """
    name, slash, rest = path[len(PEER_PREFIX) :].partition("/")
    if not name or not slash:
        raise ApiError(404, f"no such endpoint: {method} {path}")
    if method not in _READ_METHODS:
        raise ApiError(405, f"method {method} not allowed on {path}: peer paths are read-only")
    try:
        peer = validate_peer_name(name)
    except InvalidName as exc:
        raise ApiError(400, str(exc)) from None
    target = "/" + rest
    if not _PEER_READS.fullmatch(target):
        raise ApiError(404, f"no such endpoint: {method} {path}")
    parts: list[bytes] = []
    for part in query.split(b"&") if query else []:
        key, _, value = part.partition(b"=")
        if unquote_plus(key.decode("latin-1")) != "peer":
            parts.append(part)
            continue
        given = unquote_plus(value.decode("latin-1"))
        if given not in ("", peer):
            raise ApiError(400, f"conflicting peer: the path names {peer!r}, ?peer= {given!r}")
    parts.append(b"peer=" + quote(peer).encode("ascii"))
    return peer, target, b"&".join(parts)


class PeerPrefixMiddleware:
    """Serves ``/peer/<name>/v1/...`` as ``/v1/...?peer=<name>`` for the read endpoints.

    Rewrites the scope in place before routing, so the handlers (blocking queries included)
    are the very same and metrics count the request under the route's own template.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PEER_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            peer, path, query = peer_prefix_rewrite(
                scope["path"], scope["method"], scope.get("query_string", b"")
            )
        except ApiError as exc:
            headers = {"Allow": ", ".join(_READ_METHODS)} if exc.status == 405 else None
            response = PlainTextResponse(exc.message + "\n", exc.status, headers=headers)
            await response(scope, receive, send)
            return
        raw_prefix = f"{PEER_PREFIX}{peer}".encode("ascii")
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is not None and raw_path.startswith(raw_prefix + b"/"):
            scope["raw_path"] = raw_path[len(raw_prefix) :]
        else:
            scope["raw_path"] = quote(path).encode("ascii")
        scope["path"] = path
        scope["query_string"] = query
        await self.app(scope, receive, send)


class Api:
    """The handlers, bound to one store, notifier and config."""

    def __init__(self, store: Store, notifier: IndexNotifier, config: AgentConfig) -> None:
        self.store = store
        self.notifier = notifier
        self.config = config

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """A write of one instance or check (``fn`` takes ``durable``), made durable before
        the caller answers, but visible to the exporters before its fsync.

        Committed without the fsync, then the loop turns a few times so that the exporters
        the commit woke produce it (their records are on the socket to Kafka), and only then
        the WAL is fsync'd: the disk flush (0.3-0.5 ms here, milliseconds on network disks)
        overlaps the broker and the peer instead of preceding them. The caller's answer
        still waits for it. A power loss between the two leaves the peer with a change this
        agent lost and never acknowledged; the exporter takes it back on its next start
        (``Exporter.catch_up``).

        On the loop when the store is free (see ``store.write_on_loop``). Reads are plain
        calls on the loop: WAL readers never wait for the writer, and their decoding would
        hold the GIL in a thread too.
        """
        result = await write_on_loop(self.store, partial(fn, durable=False), *args)
        for _ in range(EXPORTER_TURNS):
            await anyio.lowlevel.checkpoint()
        self.store.sync()
        return result

    async def bulk_write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write that recomputes the whole exported view (config entries: seconds at
        100k instances) in a worker thread, so the loop keeps serving meanwhile."""
        return await anyio.to_thread.run_sync(fn, *args)

    # --- query parameters ---

    def blocking_params(self, request: Request) -> tuple[int, float] | None:
        """A blocking query's ``(index, wait)``, or None for a plain read."""
        raw = request.query_params.get("index")
        if raw is None:
            return None
        if not raw.isdigit():
            raise ApiError(400, f"invalid index {raw!r}: expected a non-negative integer")
        wait = DEFAULT_WAIT_SECONDS
        if "wait" in request.query_params:
            try:
                wait = catalog.parse_duration(request.query_params["wait"], "wait")
            except CatalogError as exc:
                raise ApiError(400, str(exc)) from None
        return int(raw), min(wait, MAX_WAIT_SECONDS)

    async def answer_blocking(
        self,
        request: Request,
        read: Callable[[], Any],
        peer: str | None = None,
        service: str | None = None,
        answer_index: Callable[[], int] | None = None,
    ) -> Answer:
        """A read that may be a blocking query, answered when *its* answer changes.

        ``read()`` builds the answer (Structs, lists) from ``service`` (None: every service)
        of ``peer``'s imported catalog (None: the local one). Its ``X-Consul-Index`` is the
        last commit that may have changed it (``IndexNotifier.index_of``), not the catalog's
        index, which moves on every change of anything. If nothing has changed since the
        client's ``?index``, its answer now is the one it already has: the query waits, woken
        only by the commits that may change what it reads (``IndexNotifier.watch``), reads
        again and answers once its answer differs, or when ``?wait`` ends (then the same
        body, as Consul does). A client behind this answer's index is answered at once.
        ``answer_index`` replaces the index of ``peer``/``service`` (a config entry's).
        """
        if answer_index is None:
            answer_index = partial(self.notifier.index_of, peer, service)
        wanted = self.blocking_params(request)
        # Subscribed before the index and the read: a commit after either still wakes it.
        woken = self.notifier.watch(peer, service) if wanted is not None else None
        # Before the read: the data is at least as new. This answer's own index, not the
        # catalog's: commits elsewhere do not put its watchers behind (notifier.AnswerIndexes).
        index = answer_index()
        body = _encoder.encode(read())
        if wanted is not None and woken is not None and index <= wanted[0]:
            with anyio.move_on_after(wanted[1]) as waited:
                while not self.notifier.closed:
                    await woken.wait()
                    woken = self.notifier.watch(peer, service)
                    index = answer_index()
                    fresh = _encoder.encode(read())
                    if fresh != body:
                        body = fresh
                        break
            if waited.cancelled_caught:
                # The wait ran out: the same answer at the same index (as Consul does), read
                # again only if a commit of its own came with the timeout.
                index = answer_index()
                if woken.is_set():
                    body = _encoder.encode(read())
        return index_answer(body, index)

    def peer_param(self, request: Request) -> str | None:
        peer = request.query_params.get("peer")
        if peer is None or peer == "":
            return None
        try:
            return validate_peer_name(peer)
        except InvalidName as exc:
            raise ApiError(400, str(exc)) from None

    def common_params(self, request: Request) -> None:
        if request.query_params.get("filter"):
            raise ApiError(400, "the filter parameter is not supported by this agent")
        dc = request.query_params.get("dc")
        if dc and dc != self.config.name:
            raise ApiError(
                400, f"unknown datacenter {dc!r}: this agent serves {self.config.name!r}"
            )

    # --- views ---

    def node(self, peer: str | None, address: str = "") -> NodeView:
        if peer is None:
            return NodeView(
                "", self.config.name, self.config.node_address, self.config.name, {}, {}
            )
        return NodeView("", peer, address, peer, {}, {}, PeerName=peer)

    def agent_service(self, inst: ServiceInstance, peer: str | None) -> AgentServiceView:
        return AgentServiceView(
            ID=inst.ID,
            Service=inst.Name,
            Tags=inst.Tags,
            Meta=inst.Meta,
            Port=inst.Port,
            Address=inst.Address,
            Weights=Weights(),
            EnableTagOverride=False,
            Datacenter=peer or self.config.name,
            PeerName=peer if peer is not None else msgspec.UNSET,
        )

    def check_view(self, check: HealthCheck, inst: ServiceInstance | None, node: str) -> CheckView:
        return CheckView(
            Node=node,
            CheckID=check.CheckID,
            Name=check.Name,
            Status=str(check.Status),
            Notes=check.Notes,
            Output=check.Output,
            ServiceID=check.ServiceID,
            ServiceName=check.ServiceName,
            ServiceTags=inst.Tags if inst else (),
            Type="ttl" if check.TTLSeconds > 0 else "",
        )

    # --- read endpoints ---

    def _read_instances(self, peer: str | None, name: str | None) -> list[LocalInstance]:
        """Instances from the local catalog, or from ``peer``'s imported one. Imported
        instances carry no raft-style indexes (0), as they are not ours."""
        if peer is None:
            return self.store.list_local(name)
        imported = self.store.imported_instances(peer, name)
        return [LocalInstance(inst, "peer", 0, 0) for inst in imported]

    async def catalog_services(self, request: Request) -> Answer:
        self.common_params(request)
        peer = self.peer_param(request)
        return await self.answer_blocking(
            request,
            lambda: catalog.service_tags(r.Instance for r in self._read_instances(peer, None)),
            peer,
        )

    def _service_name(self, request: Request) -> str:
        try:
            return validate_service_name(request.path_params["name"])
        except InvalidName as exc:
            raise ApiError(400, str(exc)) from None

    async def catalog_service(self, request: Request) -> Answer:
        self.common_params(request)
        name = self._service_name(request)
        peer = self.peer_param(request)
        tag = request.query_params.get("tag")
        return await self.answer_blocking(
            request, lambda: self._catalog_entries(peer, name, tag), peer, name
        )

    def _catalog_entries(self, peer: str | None, name: str, tag: str | None) -> list[CatalogEntry]:
        entries = []
        for row in self._read_instances(peer, name):
            inst = row.Instance
            if tag is not None and tag not in inst.Tags:
                continue
            node = self.node(peer, inst.Address)
            entries.append(
                CatalogEntry(
                    ID="",
                    Node=node.Node,
                    Address=node.Address,
                    Datacenter=node.Datacenter,
                    TaggedAddresses={},
                    NodeMeta={},
                    ServiceID=inst.ID,
                    ServiceName=inst.Name,
                    ServiceAddress=inst.Address,
                    ServiceTags=inst.Tags,
                    ServiceMeta=inst.Meta,
                    ServicePort=inst.Port,
                    ServiceWeights=Weights(),
                    ServiceEnableTagOverride=False,
                    CreateIndex=row.CreateIndex,
                    ModifyIndex=row.ModifyIndex,
                    PeerName=peer if peer is not None else msgspec.UNSET,
                )
            )
        return entries

    async def health_service(self, request: Request) -> Answer:
        self.common_params(request)
        name = self._service_name(request)
        peer = self.peer_param(request)
        tag = request.query_params.get("tag")
        # Consul treats a bare ``?passing`` as true.
        passing = request.query_params.get("passing", "false").lower() not in ("false", "0")
        return await self.answer_blocking(
            request, lambda: self._health_entries(peer, name, tag, passing), peer, name
        )

    def _health_entries(
        self, peer: str | None, name: str, tag: str | None, passing: bool
    ) -> list[HealthEntry]:
        instances = [r.Instance for r in self._read_instances(peer, name)]
        entries = []
        for inst in catalog.filter_health(instances, passing=passing, tag=tag):
            node = self.node(peer, inst.Address)
            checks = tuple(self.check_view(c, inst, node.Node) for c in inst.Checks)
            if peer is not None:
                checks = tuple(msgspec.structs.replace(c, PeerName=peer) for c in checks)
            entries.append(HealthEntry(node, self.agent_service(inst, peer), checks))
        return entries

    async def exported_services(self, request: Request) -> Answer:
        return await self.answer_blocking(request, self.store.exported_summary)

    # --- agent endpoints ---

    async def register(self, request: Request) -> Answer:
        body = await read_json(request, self.config.max_body_bytes)
        try:
            instance = catalog.decode_registration(body)
        except CatalogError as exc:
            raise ApiError(400, f"invalid service registration: {exc}") from None
        try:
            await self.write(self.store.register, instance, "api")
        except StoreError as exc:
            raise ApiError(400, f"invalid service registration: {exc}") from None
        return empty_ok()

    async def deregister(self, request: Request) -> Response:
        service_id = request.path_params["service_id"]
        if not await self.write(self.store.deregister, service_id):
            raise ApiError(404, f"Unknown service ID {service_id!r}")
        return Response(b"", 200)

    async def _set_check(self, check_id: str, status: CheckStatus, output: str | None) -> Response:
        if not await self.write(self.store.update_check, check_id, status, output):
            raise ApiError(404, f"Unknown check ID {check_id!r}")
        return Response(b"", 200)

    async def check_pass(self, request: Request) -> Response:
        note = request.query_params.get("note")
        return await self._set_check(request.path_params["check_id"], CheckStatus.PASSING, note)

    async def check_warn(self, request: Request) -> Response:
        note = request.query_params.get("note")
        return await self._set_check(request.path_params["check_id"], CheckStatus.WARNING, note)

    async def check_fail(self, request: Request) -> Response:
        note = request.query_params.get("note")
        return await self._set_check(request.path_params["check_id"], CheckStatus.CRITICAL, note)

    async def check_update(self, request: Request) -> Response:
        update = convert(
            await read_json(request, self.config.max_body_bytes), CheckUpdate, "check update"
        )
        return await self._set_check(request.path_params["check_id"], update.Status, update.Output)

    async def agent_services(self, request: Request) -> Response:
        instances = self.store.instances()
        return json_response({inst.ID: self.agent_service(inst, None) for inst in instances})

    async def agent_service_one(self, request: Request) -> Response:
        inst = self.store.instance(request.path_params["service_id"])
        if inst is None:
            raise ApiError(404, f"Unknown service ID {request.path_params['service_id']!r}")
        return json_response(self.agent_service(inst, None))

    async def agent_checks(self, request: Request) -> Response:
        checks = self.store.checks()
        return json_response(
            {c.CheckID: self.check_view(c, None, self.config.name) for c in checks}
        )

    async def agent_self(self, request: Request) -> Response:
        cfg = self.config
        return json_response(
            AgentSelf(
                Config=AgentSelfConfig(cfg.name, cfg.name, "", __version__, True),
                Member=AgentSelfMember(cfg.name, cfg.node_address, cfg.http_port, {}, 1),
                Meta={},
                Kafka={
                    kafka: KafkaStatusView(Connected=connected, Since=since)
                    for kafka, (connected, since) in sorted(metrics.kafka_connections().items())
                },
            )
        )

    async def status_leader(self, request: Request) -> Response:
        # Consul answers with a JSON string; a single agent is always its own leader.
        return json_response(f"{self.config.node_address}:{self.config.http_port}")

    async def status_peers(self, request: Request) -> Response:
        return json_response([f"{self.config.node_address}:{self.config.http_port}"])

    # --- config entries ---

    async def config_put(self, request: Request) -> Response:
        body = await read_json(request, self.config.max_body_bytes)
        kind = body.get("Kind") if isinstance(body, dict) else None
        if kind != catalog.EXPORTED_SERVICES_KIND:
            raise ApiError(
                400,
                f"unsupported config entry Kind {kind!r}: only 'exported-services' is supported",
            )
        entry = convert(body, ExportedServicesEntry, "exported-services entry")
        try:
            entry = catalog.validate_exported(entry)
        except CatalogError as exc:
            raise ApiError(400, f"invalid exported-services entry: {exc}") from None
        await self.bulk_write(self.store.set_exported_services, entry)
        return json_response(True)

    def _config_path(self, request: Request) -> None:
        kind, name = request.path_params["kind"], request.path_params["name"]
        if kind != catalog.EXPORTED_SERVICES_KIND:
            raise ApiError(400, f"unsupported config entry kind {kind!r}")
        if name != catalog.EXPORTED_SERVICES_NAME:
            raise ApiError(404, f"config entry not found for {kind!r} / {name!r}")

    async def config_get(self, request: Request) -> Answer:
        """The entry, as a blocking query too (consul-template and the like watch it): it
        waits until the entry itself changes, not for any commit; a missing entry is a 404
        once the wait is over, as in Consul."""
        self._config_path(request)
        answer = await self.answer_blocking(
            request, self.store.exported_services, answer_index=self.notifier.config_index
        )
        _status, body, _headers = answer
        if body == b"null":  # no entry: what the store's None encodes to
            raise ApiError(404, "config entry not found for 'exported-services' / 'default'")
        return answer

    async def config_delete(self, request: Request) -> Response:
        self._config_path(request)
        await self.bulk_write(self.store.delete_exported_services)
        return json_response(True)

    async def prometheus(self, request: Request) -> Response:
        metrics.CATALOG_INDEX.set(self.notifier.index)
        return Response(generate_latest(), 200, media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[BaseRoute]:
        # Starlette tries routes in order, and each try costs (80 µs for 17 of them right
        # after the process slept): the reads blocking queries wait on and the writes of a
        # change's way come first.
        return [
            Route("/v1/health/service/{name}", RawEndpoint(self.health_service), methods=["GET"]),
            Route("/v1/catalog/service/{name}", RawEndpoint(self.catalog_service), methods=["GET"]),
            Route("/v1/agent/service/register", RawEndpoint(self.register), methods=["PUT"]),
            Route("/v1/agent/service/deregister/{service_id}", self.deregister, methods=["PUT"]),
            Route("/v1/agent/service/{service_id}", self.agent_service_one, methods=["GET"]),
            Route("/v1/agent/services", self.agent_services, methods=["GET"]),
            Route("/v1/agent/checks", self.agent_checks, methods=["GET"]),
            Route("/v1/agent/check/pass/{check_id}", self.check_pass, methods=["PUT"]),
            Route("/v1/agent/check/warn/{check_id}", self.check_warn, methods=["PUT"]),
            Route("/v1/agent/check/fail/{check_id}", self.check_fail, methods=["PUT"]),
            Route("/v1/agent/check/update/{check_id}", self.check_update, methods=["PUT"]),
            Route("/v1/agent/self", self.agent_self, methods=["GET"]),
            Route("/v1/config", self.config_put, methods=["PUT"]),
            Route("/v1/config/{kind}/{name}", RawEndpoint(self.config_get), methods=["GET"]),
            Route("/v1/config/{kind}/{name}", self.config_delete, methods=["DELETE"]),
            Route("/v1/exported-services", RawEndpoint(self.exported_services), methods=["GET"]),
            Route("/v1/catalog/services", RawEndpoint(self.catalog_services), methods=["GET"]),
            Route("/v1/status/leader", self.status_leader, methods=["GET"]),
            Route("/v1/status/peers", self.status_peers, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return PlainTextResponse(exc.message + "\n", exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return PlainTextResponse(message + "\n", exc.status_code, headers=exc.headers)


def create_app(
    store: Store,
    notifier: IndexNotifier,
    config: AgentConfig,
    *,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """Build the agent's ASGI app; ``extra_routes`` is the seam for the peering API."""
    api = Api(store, notifier, config)
    app = Starlette(
        routes=[*api.routes(), *extra_routes],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    # The last added is the outermost: MetricsMiddleware sees every request as the others
    # leave it (a blocking query ended by ClientGoneMiddleware as a 499).
    app.add_middleware(ClientGoneMiddleware)
    app.add_middleware(PeerPrefixMiddleware)
    app.add_middleware(MetricsMiddleware)
    return app
