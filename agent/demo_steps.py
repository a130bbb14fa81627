"""The pieces ``peering demo`` is made of: agent processes, HTTP calls, waits and tables.

Every wait here is bounded and fails with a DemoError whose message is one line; the demo
prints it in red. Nothing in this module decides the demo's story: agent.demo does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich.table import Table

from agent.devbroker import DevBroker, DevBrokerError, free_port
from agent.processes import stop_process

T = TypeVar("T")

AGENT_READY_TIMEOUT = 30.0
WAIT_TIMEOUT = 30.0
HEARTBEAT_SECONDS = "1"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class DemoError(Exception):
    """A demo step failed; str() is the one line to show."""


def wait_until(what: str, check: Callable[[], T | None], timeout: float = WAIT_TIMEOUT) -> T:
    """Poll ``check`` until it returns a truthy value; DemoError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, ValueError) as error:
            last = error
        else:
            if value:
                return value
            last = value
        time.sleep(0.02)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def new_broker(data_dir: Path) -> DevBroker:
    """A broker on a new data dir, not started yet (the caller owns it before it runs)."""
    try:
        return DevBroker(data_dir, heap="384m")
    except DevBrokerError as error:
        raise DemoError(str(error).splitlines()[0]) from None


def ready_broker(broker: DevBroker, timeout: float = 90.0) -> float:
    try:
        return broker.wait_ready(timeout)
    except DevBrokerError as error:
        first_line = str(error).splitlines()[0]
        raise DemoError(f"Kafka in {broker.data_dir} did not start: {first_line}") from None


def agent_env() -> dict[str, str]:
    """The caller's environment without PEERING_* (they would steer the agents), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERING_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["PEERING_HEARTBEAT_INTERVAL"] = HEARTBEAT_SECONDS
    env["PEERING_ESTABLISH_TIMEOUT"] = "30"
    return env


class Cluster:
    """One cluster of the demo: its agent subprocess, its Kafka, its HTTP client."""

    def __init__(self, name: str, kafka: str, workdir: Path) -> None:
        self.name = name
        self.kafka = kafka
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "agent.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=10.0)
        return self._http

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "agent", "agent",
            "--name", self.name, "--kafka", self.kafka,
            "--http", self.addr, "--data-dir", str(self.data_dir),
        ]  # fmt: skip

    def start(self) -> None:
        """Spawn the agent in its own session (Ctrl-C reaches the demo, which stops it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=agent_env(),
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = AGENT_READY_TIMEOUT) -> None:
        """Until /v1/status/leader answers; one retry on a new port if it was taken."""
        for attempt in range(2):
            try:
                wait_until(f"agent {self.name} to answer", self._ready, timeout)
                return
            except DemoError:
                if attempt == 0 and "cannot listen on" in self.log_tail():
                    self.stop()
                    self.port = free_port()
                    self._http = None
                    self.start()
                    continue
                raise
        raise DemoError(f"agent {self.name} did not start")  # pragma: no cover

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            last = self.log_tail().splitlines()[-1:] or ["(no log)"]
            raise DemoError(f"agent {self.name} exited with {code}: {last[0]}")
        return self.http.get("/v1/status/leader", timeout=0.5).status_code == 200

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; returns the exit code (None if never started)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self.proc = self.proc, None
        return None if proc is None else stop_process(proc, timeout)

    def detach(self) -> None:
        """Forget the process without stopping it (``--keep``)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        self.proc = None

    # --- HTTP calls (Consul's API shapes) ---

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        response = self.http.request(method, path, json=body, timeout=timeout)
        if response.status_code >= 400:
            detail = response.text.strip().splitlines()[:1] or [response.reason_phrase]
            raise DemoError(f"{self.name}: {method} {path} -> {response.status_code}: {detail[0]}")
        return response.json() if response.content.strip() else None

    def register(self, service_id: str, name: str, port: int, ttl: bool = False) -> None:
        body: dict[str, Any] = {"ID": service_id, "Name": name, "Address": "10.0.0.1"}
        body["Port"] = port
        if ttl:
            body["Check"] = {"TTL": "10m", "Status": "passing"}
        self.call("PUT", "/v1/agent/service/register", body)

    def export(self, services: dict[str, list[str]]) -> None:
        entry = {
            "Kind": "exported-services",
            "Name": "default",
            "Services": [
                {"Name": name, "Consumers": [{"Peer": p} for p in peers]}
                for name, peers in services.items()
            ],
        }
        self.call("PUT", "/v1/config", entry)

    def peerings(self) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = self.call("GET", "/v1/peerings")
        return views

    def state(self, peer: str) -> str | None:
        response = self.http.get(f"/v1/peering/{peer}")
        if response.status_code == 404:
            return None
        state: str = response.json()["State"]
        return state

    def imported(self, peer: str) -> dict[str, list[dict[str, Any]]]:
        """service name -> health entries, as imported from ``peer``."""
        names: dict[str, Any] = self.http.get("/v1/catalog/services", params={"peer": peer}).json()
        return {
            name: self.http.get(f"/v1/health/service/{name}", params={"peer": peer}).json()
            for name in sorted(names)
        }

    def metrics(self) -> list[str]:
        return self.http.get("/metrics").text.splitlines()


def peer(acceptor: Cluster, dialer: Cluster) -> float:
    """Token on the acceptor, establish on the dialer, wait for ACTIVE on both; seconds."""
    started = time.monotonic()
    token = acceptor.call("POST", "/v1/peering/token", {"PeerName": dialer.name})["PeeringToken"]
    dialer.call(
        "POST",
        "/v1/peering/establish",
        {"PeerName": acceptor.name, "PeeringToken": token},
        timeout=60.0,
    )
    wait_until(f"{acceptor.name} to see {dialer.name} ACTIVE",
               lambda: acceptor.state(dialer.name) == "ACTIVE")  # fmt: skip
    wait_until(f"{dialer.name} to see {acceptor.name} ACTIVE",
               lambda: dialer.state(acceptor.name) == "ACTIVE")  # fmt: skip
    return time.monotonic() - started


def instance_health(entry: dict[str, Any]) -> str:
    """The worst check status of one health entry (passing when it has no checks)."""
    order = {"passing": 0, "warning": 1, "critical": 2}
    statuses = [str(c.get("Status", "passing")) for c in entry.get("Checks", [])]
    return max(statuses, key=lambda s: order.get(s, 3), default="passing")


def imported_health(cluster: Cluster, peer_name: str, service: str) -> dict[str, str]:
    """instance id -> health, for ``service`` imported from ``peer_name``."""
    entries = cluster.imported(peer_name).get(service, [])
    return {e["Service"]["ID"]: instance_health(e) for e in entries}


# --- tables ---------------------------------------------------------------------------------

_STATE_STYLE = {"ACTIVE": "green", "FAILING": "red", "TERMINATED": "red"}
_HEALTH_STYLE = {"passing": "green", "warning": "yellow", "critical": "red"}


def _ago(moment: str | None) -> str:
    return moment[11:19] if moment else "-"


def peering_table(cluster: Cluster) -> Table:
    table = Table(title=f"{cluster.name}: peerings", title_justify="left")
    for column in ("PEER", "STATE", "ROLE", "KAFKA", "IMPORTED", "EXPORTED", "LAST RECEIVE"):
        table.add_column(column)
    for view in cluster.peerings():
        status = view.get("StreamStatus") or {}
        state = str(view.get("State"))
        table.add_row(
            str(view.get("Name")),
            f"[{_STATE_STYLE.get(state, 'yellow')}]{state}[/]",
            str(view.get("Role")),
            ", ".join(view.get("PeerServerAddresses") or []),
            ", ".join(status.get("ImportedServices") or []) or "-",
            ", ".join(status.get("ExportedServices") or []) or "-",
            _ago(status.get("LastReceive")),
        )
    return table


def imported_table(cluster: Cluster, peers: Iterable[str]) -> Table:
    table = Table(title=f"{cluster.name}: imported services", title_justify="left")
    for column in ("FROM PEER", "SERVICE", "INSTANCE", "ADDRESS", "HEALTH"):
        table.add_column(column)
    for peer_name in peers:
        for service, entries in cluster.imported(peer_name).items():
            for entry in entries:
                svc = entry["Service"]
                health = instance_health(entry)
                table.add_row(
                    peer_name,
                    service,
                    str(svc["ID"]),
                    f"{svc['Address']}:{svc['Port']}",
                    f"[{_HEALTH_STYLE.get(health, 'red')}]{health}[/]",
                )
    return table


def metric_lines(cluster: Cluster, prefixes: Iterable[str]) -> list[str]:
    """The exposition lines of ``cluster`` that start with one of ``prefixes``."""
    wanted = tuple(prefixes)
    return [line for line in cluster.metrics() if line.startswith(wanted)]


def run_replay(peer_name: str, data_dir: Path, timeout: float = 60.0) -> str:
    """``peering replay --peer NAME --data-dir DIR`` in a subprocess; its stdout."""
    env = agent_env()
    env["COLUMNS"] = "120"
    command = [
        sys.executable, "-m", "agent", "replay", "--peer", peer_name, "--data-dir", str(data_dir),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise DemoError(f"peering replay took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DemoError(f"peering replay exited with {done.returncode}: {last}")
    return done.stdout
