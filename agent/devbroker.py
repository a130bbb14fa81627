"""A real Apache Kafka (KRaft, one combined broker+controller) for development and tests.

The jars come from Maven Central through ``ops/kafka/fetch.sh`` into a git-ignored cache; this
module formats a log dir and runs ``kafka.Kafka`` with the machine's Java. Readiness means a
metadata request was answered (``describe_cluster``), not merely that a port is open.

A data dir remembers its ports and cluster id in ``broker.json``, so restarting a broker on the
same dir brings back the same listener and every topic and record.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import msgspec

from agent import kafka_client
from agent.processes import kill_process, stop_process

_PACKAGE_DIR = Path(__file__).resolve().parent


class DevBrokerError(Exception):
    """The dev broker could not be fetched, formatted or started (one clear message)."""


class BrokerLayout(msgspec.Struct, frozen=True):
    """What a data dir remembers about its broker, so that a restart is the same broker."""

    port: int
    controller_port: int
    cluster_id: str


def kafka_ops_dir() -> Path:
    """``ops/kafka`` of a source checkout, or the copy packed into the wheel."""
    for candidate in (_PACKAGE_DIR.parent / "ops" / "kafka", _PACKAGE_DIR / "_kafka"):
        if (candidate / "fetch.sh").is_file():
            return candidate
    raise DevBrokerError("ops/kafka/fetch.sh not found next to the agent package")


def kafka_cache_dir() -> Path:
    """Where fetched jars live: $PEERING_KAFKA_CACHE, else .cache/kafka in the checkout."""
    configured = os.environ.get("PEERING_KAFKA_CACHE")
    if configured:
        return Path(configured).resolve()
    checkout = _PACKAGE_DIR.parent
    if (checkout / "ops" / "kafka").is_dir():
        return checkout / ".cache" / "kafka"
    return Path.home() / ".cache" / "peering-agent" / "kafka"


def installed_kafka() -> tuple[str, Path] | None:
    """(version, libs dir) of a complete cached Kafka, or None when nothing is fetched yet."""
    cache = kafka_cache_dir()
    try:
        version = (cache / "current").read_text().strip()
    except FileNotFoundError:
        return None
    libs = cache / version / "libs"
    return (version, libs) if (libs / ".complete").is_file() else None


def ensure_kafka() -> tuple[str, Path]:
    """Return the cached Kafka, fetching it with ``ops/kafka/fetch.sh`` the first time."""
    found = installed_kafka()
    if found is not None:
        return found
    script = kafka_ops_dir() / "fetch.sh"
    result = subprocess.run(
        ["bash", str(script), str(kafka_cache_dir())], check=False, stdout=sys.stderr
    )
    found = installed_kafka()
    if result.returncode != 0 or found is None:
        raise DevBrokerError(f"fetching Kafka failed (exit {result.returncode}); see {script}")
    return found


def java_executable() -> str:
    """The JVM to run: $JAVA_HOME/bin/java, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise DevBrokerError("java not found: install a JDK 17+ or set JAVA_HOME")
    return java


def free_port() -> int:
    """A loopback port that was free a moment ago (callers retry on the rare race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _render_properties(layout: BrokerLayout, log_dir: Path) -> str:
    template = (kafka_ops_dir() / "server.properties.in").read_text()
    for placeholder, value in {
        "@PORT@": str(layout.port),
        "@CONTROLLER_PORT@": str(layout.controller_port),
        "@LOG_DIR@": str(log_dir),
    }.items():
        template = template.replace(placeholder, value)
    return template


class DevBroker:
    """One broker process on a data dir. Not thread-safe; owned by one caller."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        heap: str = "512m",
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.heap = heap
        self.extra_properties = dict(extra_properties or {})
        self.version, self.libs = ensure_kafka()
        self.layout = self._load_or_create_layout(port)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.layout.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _load_or_create_layout(self, port: int | None) -> BrokerLayout:
        layout_file = self.data_dir / "broker.json"
        if layout_file.is_file():
            layout = msgspec.json.decode(layout_file.read_bytes(), type=BrokerLayout)
            if port is not None and port != layout.port:
                raise DevBrokerError(
                    f"{self.data_dir} belongs to a broker on port {layout.port}, not {port}"
                )
            return layout
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = self._java_output("kafka.tools.StorageTool", "random-uuid").strip()
        layout = BrokerLayout(
            port=port if port is not None else free_port(),
            controller_port=free_port(),
            cluster_id=cluster_id,
        )
        layout_file.write_bytes(msgspec.json.encode(layout))
        return layout

    def _java_output(self, *args: str) -> str:
        command = [java_executable(), "-cp", f"{self.libs}/*", *self._log_options(), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevBrokerError(f"{args[0]} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _log_options(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={kafka_ops_dir() / 'log4j2.properties'}"]

    def _write_properties(self) -> Path:
        properties = _render_properties(self.layout, self.data_dir / "kraft")
        extra = "".join(f"{key}={value}\n" for key, value in self.extra_properties.items())
        path = self.data_dir / "server.properties"
        path.write_text(properties + extra)
        return path

    def start(self) -> None:
        """Format the log dir if new and launch the JVM (returns at once; see wait_ready)."""
        if self._process is not None and self._process.poll() is None:
            raise DevBrokerError("broker already running")
        properties = self._write_properties()
        # --ignore-formatted makes this a no-op on a dir that already holds a cluster.
        self._java_output(
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", self.layout.cluster_id, "-c", str(properties),
        )  # fmt: skip
        command = [
            java_executable(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            *self._log_options(),
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(properties),
        ]
        log = self.log_path.open("ab")
        try:
            # A new session keeps a terminal's Ctrl-C from reaching the JVM directly: the
            # owner decides when and how the broker stops.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until the broker answers a metadata request; return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        # Refused connections are the expected answer until the broker listens; aiokafka
        # logs each one as an error, which would bury the one line that matters.
        aiokafka_log = logging.getLogger("aiokafka")
        previous_level = aiokafka_log.level
        aiokafka_log.setLevel(logging.CRITICAL)
        try:
            return self._poll_ready(started, deadline, timeout)
        finally:
            aiokafka_log.setLevel(previous_level)

    def _poll_ready(self, started: float, deadline: float, timeout: float) -> float:
        while True:
            process = self._process
            if process is None:
                raise DevBrokerError("broker not started")
            if process.poll() is not None:
                raise DevBrokerError(
                    f"broker exited with code {process.returncode} while starting:\n"
                    + self.log_tail()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevBrokerError(f"broker not ready after {timeout:.0f}s:\n{self.log_tail()}")
            if kafka_client.probe_sync(self.bootstrap, timeout=min(2.0, remaining)):
                return time.monotonic() - started
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean shutdown), SIGKILL if it takes longer than ``timeout``."""
        process, self._process = self._process, None
        return 0 if process is None else stop_process(process, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no clean shutdown."""
        process, self._process = self._process, None
        if process is not None:
            kill_process(process)

    def suspend(self) -> None:
        """SIGSTOP: the broker hangs without closing its sockets."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the JVM, from /proc."""
        if self._process is None:
            return 0
        for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"


def run_foreground(*, port: int, data_dir: Path, heap: str = "512m") -> int:
    """``peering dev-broker``: run until SIGINT/SIGTERM, then stop the broker cleanly."""
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    broker: DevBroker | None = None
    try:
        broker = DevBroker(data_dir, port=port, heap=heap)
        broker.start()
        seconds = broker.wait_ready()
        print(
            f"kafka {broker.version} ready on {broker.bootstrap} "
            f"(cluster {broker.layout.cluster_id}, data dir {broker.data_dir}, "
            f"started in {seconds:.1f}s, log {broker.log_path})",
            flush=True,
        )
        while not stop_requested and broker.is_running():
            time.sleep(0.2)
        if not stop_requested:
            print(f"kafka exited by itself; last log lines:\n{broker.log_tail()}", file=sys.stderr)
            return 1
        # The JVM answers SIGTERM with its shutdown hooks and exit status 143: a clean stop.
        broker.stop()
        print("kafka stopped cleanly", flush=True)
        return 0
    except DevBrokerError as error:
        print(f"dev-broker: {error}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
