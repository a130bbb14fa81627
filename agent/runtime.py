"""The agent process: one anyio task group owning every loop.

Children: the HTTP server (uvicorn, ready once it listens), the TTL expiry ticker, the services
file watcher, the signal watcher and any Extension tasks (peering). SIGINT/SIGTERM cancel the
group; uvicorn then drains (2 s grace for open blocking queries), well inside 5 s. A child
that raises is logged with its name and takes the whole agent down (the CLI exits non-zero):
never half alive. On any stop the HTTP server is drained, not torn down, so sockets close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
import uvicorn
from starlette.routing import BaseRoute

from agent import data_dir, metrics
from agent.catalog import CatalogError, decode_services_file
from agent.config import AgentConfig, LogFormat
from agent.httpapi import create_app
from agent.model import ServiceInstance
from agent.notifier import IndexNotifier
from agent.store import Store, StoreError

log = logging.getLogger("agent")

# How often the services file's mtime and size are checked (a stat() call: cheap). A change
# is read once it has stayed the same for one interval, so a file still being written (not
# replaced atomically) is not read half-way: changes reach peers within 0.1-0.2 s.
SERVICES_FILE_POLL_SECONDS = 0.1
HTTP_GRACE_SECONDS = 2
STOP_DEADLINE_SECONDS = 4.0


class AgentError(Exception):
    """The agent cannot start or keep running for a reason the operator can fix."""


@dataclasses.dataclass(frozen=True)
class Extension:
    """What a later layer (peering) adds to the agent: HTTP routes and supervised loops.

    Tasks run in the agent's task group under their name: if one raises, the agent stops.
    """

    routes: Sequence[BaseRoute] = ()
    tasks: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = ()


# Built once the store is open, so routes and loops can close over it.
ExtensionFactory = Callable[[Store, IndexNotifier, AgentConfig], Extension]


# Structured fields that log calls may pass with ``extra=``; everything else in a record's
# __dict__ is logging's own bookkeeping. A closed list, so nothing secret slips in by accident.
LOG_FIELDS = ("peer", "peering_id", "event", "from_state", "to_state", "result", "epoch")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in LOG_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                doc[field] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc).decode()


class _RateLimit(logging.Filter):
    """Let one record per message template through every ``seconds``, then count the rest.

    aiokafka logs every failed reconnect (about 100 lines a second while a broker is away);
    our own loops already say once per outage that Kafka is unavailable, and the
    ``peering_kafka_connected`` gauge says it continuously.
    """

    def __init__(self, logger_prefix: str, seconds: float) -> None:
        super().__init__()
        self.logger_prefix = logger_prefix
        self.seconds = seconds
        self._last: dict[object, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.logger_prefix):
            return True
        key = (record.name, record.msg)
        now = record.created
        last, suppressed = self._last.get(key, (0.0, 0))
        if now - last < self.seconds:
            self._last[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more like it in the last " + (
                f"{now - last:.0f}s)"
            )
        self._last[key] = (now, 0)
        return True


KAFKA_CLIENT_LOG_INTERVAL_SECONDS = 30.0


def configure_logging(config: AgentConfig) -> None:
    handler = logging.StreamHandler()
    if config.log_format is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    # On the handler: logger filters would not see records of aiokafka's child loggers.
    handler.addFilter(_RateLimit("aiokafka", KAFKA_CLIENT_LOG_INTERVAL_SECONDS))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: signals belong to the task group."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(config: AgentConfig) -> socket.socket:
    # Binding ourselves turns "address in use" into a clear error instead of uvicorn's exit().
    host, port = config.http_host, config.http_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto is
    # TCP, and accepted sockets inherit it. Without it, uvicorn's separate header and body
    # writes meet Nagle + the client's delayed ACK: every answer took ~40 ms more.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AgentError(f"cannot listen on {config.http}: {exc.strerror}") from None
    return sock


async def _supervised(name: str, fn: Callable[[], Awaitable[None]]) -> None:
    """Run a child; if it fails, say which one before the failure stops the agent."""
    try:
        await fn()
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        log.error("task %s failed, stopping the agent: %s: %s", name, type(exc).__name__, exc)
        raise


async def _serve_http(
    server: _Server,
    sock: socket.socket,
    on_stop: Callable[[], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; on cancellation let uvicorn drain instead of tearing it down.

    ``on_stop`` runs first: it releases open blocking queries so they answer at once.
    """
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            # Shielded: uvicorn stops through should_exit (below), which closes its sockets
            # and gives open requests HTTP_GRACE_SECONDS, rather than dying mid-write.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(_supervised, "http", serve)
        try:
            while not server.started:
                if stopped.is_set():
                    raise AgentError("HTTP server stopped before it was ready")
                await anyio.sleep(0.01)
            task_status.started()
            await stopped.wait()
            raise AgentError("HTTP server stopped unexpectedly")
        finally:
            on_stop()
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_DEADLINE_SECONDS):
                await stopped.wait()


async def _ttl_ticker(store: Store, interval: float) -> None:
    while True:
        # A read on the loop first. The expiry is a write transaction in a worker thread;
        # run on every tick, it held the writer lock twice a second for nothing, and the
        # loop's small writes (an importer's batch) that met it went to a thread as well.
        if store.ttl_due():
            expired = await anyio.to_thread.run_sync(store.expire_ttl_checks)
            if expired:
                metrics.TTL_CHECKS_EXPIRED.inc(len(expired))
                log.info("TTL expired, checks now critical: %s", ", ".join(expired))
        await anyio.sleep(interval)


def _read_services_file(path: Path) -> list[ServiceInstance]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror}") from None
    return decode_services_file(data, path.suffix.lower())


FileSignature = tuple[int, int] | None
"""(mtime_ns, size) of a file, None when it cannot be read."""


def reload_due(applied: FileSignature, previous: FileSignature, current: FileSignature) -> bool:
    """Whether to re-read a polled file: it differs from what was applied and has not
    changed since the previous poll (a writer still appending keeps moving it)."""
    return current != applied and current == previous


def _file_signature(path: Path) -> FileSignature:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


async def _watch_services_file(
    store: Store,
    path: Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Load the services file, then reload it whenever its mtime or size changed and then
    stayed put for one poll (see SERVICES_FILE_POLL_SECONDS).

    A bad file is logged and counted and the previous registrations stay: a typo in a
    config file must not deregister a fleet.
    """
    applied: FileSignature = None
    seen: FileSignature = None
    started = False
    while True:
        signature = _file_signature(path)
        due = not started or reload_due(applied, seen, signature)
        seen = signature
        if due:
            applied = signature
            try:
                instances = await anyio.to_thread.run_sync(_read_services_file, path)
                await anyio.to_thread.run_sync(store.sync_file_services, instances)
            except (CatalogError, StoreError) as exc:
                metrics.SERVICES_FILE_RELOADS.labels("error").inc()
                log.error("services file %s ignored, keeping previous registrations: %s", path, exc)
            else:
                metrics.SERVICES_FILE_RELOADS.labels("ok").inc()
                log.info("services file %s loaded: %d service(s)", path, len(instances))
        if not started:
            started = True
            task_status.started()
        await anyio.sleep(SERVICES_FILE_POLL_SECONDS)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return


async def run_agent(
    config: AgentConfig,
    *,
    extensions: Sequence[ExtensionFactory] = (),
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the agent until a signal arrives (returns) or a child fails (raises)."""
    started_at = time.monotonic()
    with contextlib.ExitStack() as held:
        # Entered apart from the run, so that only the lock's own errors read as the data
        # dir's.
        try:
            held.enter_context(data_dir.exclusive(Path(config.data_dir)))
        except data_dir.DataDirInUse as exc:
            raise AgentError(str(exc)) from None
        except OSError as exc:
            raise AgentError(f"cannot open state in {config.data_dir}: {exc}") from None
        await _run_with_data_dir(config, extensions, task_status, started_at)


async def _run_with_data_dir(
    config: AgentConfig,
    extensions: Sequence[ExtensionFactory],
    task_status: anyio.abc.TaskStatus[None],
    started_at: float,
) -> None:
    try:
        store = await anyio.to_thread.run_sync(Store.open, Path(config.data_dir))
    except Exception as exc:  # sqlite3.Error, OSError: an unusable data dir
        raise AgentError(f"cannot open state in {config.data_dir}: {exc}") from None
    try:
        notifier = IndexNotifier()
        notifier.bind(store.index)
        store.set_on_change(notifier.notify)
        added = [factory(store, notifier, config) for factory in extensions]
        sock = _bind(config)
        routes = [route for ext in added for route in ext.routes]
        app = create_app(store, notifier, config, extra_routes=routes)
        server = _Server(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                # Nothing reads the client's address (no access log), so uvicorn's layer
                # that takes it from X-Forwarded-For would only cost every request.
                proxy_headers=False,
                # No "server: uvicorn" on every answer: it tells a scanner what runs here.
                server_header=False,
                lifespan="off",
                timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
            )
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, tg.cancel_scope)
                await tg.start(_serve_http, server, sock, notifier.close)
                tg.start_soon(
                    _supervised, "ttl-expiry", lambda: _ttl_ticker(store, config.ttl_tick_seconds)
                )
                if config.services_file:
                    path = Path(config.services_file)
                    await tg.start(_watch_services_file, store, path)
                for ext in added:
                    for name, task in ext.tasks:
                        tg.start_soon(_supervised, name, task)
                # Everything made so far (modules, the app, the store) lives as long as the
                # process: out of the collector's sight, a full collection no longer walks
                # it, which cost bulk imports and publishes a fifth of their throughput.
                gc.freeze()
                log.info(
                    "agent %s ready: HTTP on http://%s, data dir %s (%.2fs)",
                    config.name,
                    config.http,
                    config.data_dir,
                    time.monotonic() - started_at,
                )
                task_status.started()
        finally:
            # uvicorn owns the socket once serving; closing twice is harmless.
            sock.close()
        log.info("agent %s stopped", config.name)
    finally:
        store.set_on_change(None)
        store.close()
        # An agent run inside a longer process (tests, an embedding program) leaves nothing
        # out of the collector's sight once it stops.
        gc.unfreeze()


def run(config: AgentConfig, extensions: Sequence[ExtensionFactory] = ()) -> int:
    """Blocking entry point for the CLI: the process exit code."""
    configure_logging(config)
    try:
        # uvloop: libuv's event loop trims every hop of the hot path (HTTP, Kafka, wake-ups).
        anyio.run(
            lambda: run_agent(config, extensions=extensions), backend_options={"use_uvloop": True}
        )
    except AgentError as exc:
        log.error("agent stopped: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        log.error(
            "agent stopped after a failure: %s: %s", type(first).__name__, first, exc_info=first
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
