"""Real ``prometheus`` servers for tests: free loopback port, tmp config and storage.

Every server a test starts is stopped when the test ends, also when it fails.

Fixtures (register the module in ``pytest_plugins``):

- ``prometheus_factory``: ``start(targets=..., rule_files=..., ...) -> PrometheusServer``;
  every server it started is stopped when the test ends, also when it fails;
- ``prometheus``: one server with no scrape targets and the project's rules loaded.

``PrometheusServer`` offers ``query(promql)`` (the ``result`` list of /api/v1/query),
``query_response(promql)`` (the whole JSON body, also for errors), ``alerts()``,
``targets()``, ``wait_until(check)`` and ``stop()``. ``fast_rules(path, tmp_dir)`` writes a copy
of a rules file with every ``for:`` set to 0s, for tests that cannot wait minutes for an alert.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from agent.devbroker import free_port
from agent.processes import stop_process

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_OPS = REPO / "ops" / "prometheus"
RULES_FILE = PROMETHEUS_OPS / "rules" / "peering.rules.yml"
# The job name the alert rules expect for agents (see ops/prometheus/prometheus.yml).
AGENT_JOB = "peering-agents"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_START_ATTEMPTS = 3

T = TypeVar("T")


class PrometheusError(RuntimeError):
    """The server did not start, or answered an API call with an error."""


def prometheus_binary() -> str:
    """Path of the installed ``prometheus`` (ops/prometheus/install.sh installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus not found: run ops/prometheus/install.sh as root")
    return binary


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    targets: Sequence[str],
    rule_files: Sequence[Path],
    *,
    job: str = AGENT_JOB,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> str:
    """prometheus.yml text: one static job scraping ``targets`` (host:port) at /metrics."""
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  scrape_timeout: {scrape_interval}",
        f"  evaluation_interval: {evaluation_interval}",
        "rule_files:",
        *(f"  - {_quote(str(path))}" for path in rule_files),
        "scrape_configs:",
        f"  - job_name: {_quote(job)}",
        "    metrics_path: /metrics",
        "    static_configs:",
        "      - targets: [" + ", ".join(_quote(t) for t in targets) + "]",
    ]
    return "\n".join(lines) + "\n"


def fast_rules(rules_file: Path, tmp_dir: Path) -> Path:
    """Copy ``rules_file`` into ``tmp_dir`` with every ``for:`` duration set to 0s."""
    text = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", rules_file.read_text())
    copy = tmp_dir / f"fast-{rules_file.name}"
    copy.write_text(text)
    return copy


class PrometheusServer:
    """One prometheus process with its port, config, storage dir and log file."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (RULES_FILE,),
        *,
        job: str = AGENT_JOB,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_file = workdir / "prometheus.yml"
        self.storage_dir = workdir / "data"
        self.log_file = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                targets,
                rule_files,
                job=job,
                scrape_interval=scrape_interval,
                evaluation_interval=evaluation_interval,
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            prometheus_binary(),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.storage_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once /-/ready answers 200; raise with the log tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited early:\n{self.log_tail()}")
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        body = self.api_response(path, params)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def api_response(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON body of an API GET, whatever its status (400/422 carry an error body)."""
        response = self._client.get(path, params=params)
        body: dict[str, Any] = response.json()
        return body

    def query_response(self, promql: str) -> dict[str, Any]:
        """The whole /api/v1/query body: ``status`` is "success" or "error" (with ``error``)."""
        return self.api_response("/api/v1/query", {"query": promql})

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query now; the ``result`` list ({"metric": {...}, "value": [ts, "v"]})."""
        data = self.api("/api/v1/query", {"query": promql})
        result = data["result"]
        # Scalars and strings come back as one [ts, "v"] pair; wrap them like a sample.
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_value(self, promql: str) -> float | None:
        """The value of a single-sample query, None when it returns nothing."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} samples: {result}")
        return float(result[0]["value"][1])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing): {"labels", "annotations", "state", ...}."""
        return list(self.api("/api/v1/alerts")["alerts"])

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """The firing alerts named ``alertname``."""
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with ``health`` ("up"/"down"/"unknown") and ``lastError``."""
        return list(self.api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_until(
        self, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.5
    ) -> T:
        """Poll ``check`` until it returns something other than None/False/empty; return it."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            last = check()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met after {timeout}s (last: {last!r})")
            time.sleep(interval)

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully at least once."""

        def all_up() -> bool:
            targets = self.targets()
            return bool(targets) and all(t["health"] == "up" for t in targets)

        self.wait_until(all_up, timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit code (None if not run)."""
        self._client.close()
        process, self._process = self._process, None
        return None if process is None else stop_process(process, STOP_TIMEOUT)


def start_prometheus(workdir: Path, **kwargs: Any) -> PrometheusServer:
    """Start a server and wait until ready, retrying on a lost free-port race."""
    last_error: PrometheusError | None = None
    for attempt in range(_START_ATTEMPTS):
        server = PrometheusServer(workdir / f"attempt-{attempt}", **kwargs)
        server.start()
        try:
            server.wait_ready()
        except PrometheusError as error:
            server.stop()
            last_error = error
            continue
        return server
    raise PrometheusError(
        f"prometheus did not start after {_START_ATTEMPTS} attempts: {last_error}"
    )


class PrometheusFactory:
    """Starts prometheus servers for one test and owns their shutdown."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._servers: list[PrometheusServer] = []

    def start(
        self,
        targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (RULES_FILE,),
        *,
        job: str = AGENT_JOB,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> PrometheusServer:
        server = start_prometheus(
            self._base / f"prometheus-{len(self._servers)}",
            targets=targets,
            rule_files=rule_files,
            job=job,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
        )
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start any number of real prometheus servers; all are stopped at teardown."""
    factory = PrometheusFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def prometheus(prometheus_factory: PrometheusFactory) -> PrometheusServer:
    """One real prometheus with no targets and the project's rules loaded."""
    return prometheus_factory.start()
