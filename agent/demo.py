"""``peering demo``: three clusters on two local Kafkas, peered, exporting, failing, replayed.

east and west share one Kafka; partner has its own. east accepts west, partner accepts east
(so east dials partner's Kafka, named in partner's token). The demo registers services,
exports different sets, prints each cluster's peerings and imported view, fails a TTL check and
times its arrival on the peers, shows the metrics, replays one stream, and stops everything
(``--keep`` leaves it running). Any failure is one red line and exit code 1, after cleanup.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import FrameType

from rich.console import Console

from agent.demo_steps import (
    Cluster,
    DemoError,
    imported_health,
    imported_table,
    metric_lines,
    new_broker,
    peer,
    peering_table,
    ready_broker,
    run_replay,
    wait_until,
)
from agent.devbroker import DevBroker

# What each cluster should import once the exports have flowed: peer -> {service: instances}.
EXPECTED_IMPORTS = {
    "east": {"west": {"api": 1}, "partner": {"billing": 1}},
    "west": {"east": {"web": 2, "db": 1}},
    "partner": {"east": {"web": 2}},
}
METRIC_PREFIXES = (
    'peering_state{peer="east",state="ACTIVE"}',
    'peering_imported_instances{peer="east"}',
    'peering_propagation_delay_seconds_count{peer="east"}',
)


def _imports_match(cluster: Cluster, peer_name: str, expected: dict[str, int]) -> bool:
    counts = {svc: len(entries) for svc, entries in cluster.imported(peer_name).items()}
    return counts == expected


def _critical_on(cluster: Cluster, instance: str) -> bool:
    return imported_health(cluster, "east", "web").get(instance) == "critical"


class Demo:
    """Owns every process the demo starts, so that one ``close`` stops them all."""

    def __init__(self, work: Path, console: Console) -> None:
        self.work = work
        self.console = console
        self.brokers: dict[str, DevBroker] = {}
        self.clusters: dict[str, Cluster] = {}

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    def start_kafkas(self) -> None:
        self.step("1. Two local Apache Kafkas")
        for name in ("main", "partner"):
            broker = self.brokers[name] = new_broker(self.work / "kafka" / name)
            broker.start()
        for name, broker in self.brokers.items():
            seconds = ready_broker(broker)
            self.console.print(
                f"kafka [bold]{name}[/] {broker.version} (KRaft) ready on {broker.bootstrap} "
                f"in {seconds:.1f}s (pid {broker.pid})"
            )

    def start_agents(self) -> None:
        self.step("2. Three agents (heartbeat every 1 s)")
        homes = {"east": "main", "west": "main", "partner": "partner"}
        for name, kafka in homes.items():
            cluster = Cluster(name, self.brokers[kafka].bootstrap, self.work / name)
            self.clusters[name] = cluster
            cluster.start()
        for cluster in self.clusters.values():
            cluster.wait_ready()
            self.console.print(
                f"agent [bold]{cluster.name}[/] on http://{cluster.addr} "
                f"(kafka {cluster.kafka}, pid {cluster.pid}, data {cluster.data_dir})"
            )

    def peer_clusters(self) -> None:
        self.step("3. Peering with one-time tokens")
        c = self.clusters
        for acceptor, dialer in ((c["east"], c["west"]), (c["partner"], c["east"])):
            seconds = peer(acceptor, dialer)
            self.console.print(
                f"{acceptor.name} generated a token for {dialer.name}; {dialer.name} established "
                f"over {acceptor.kafka}: [green]ACTIVE[/] on both sides in {seconds:.2f}s"
            )

    def register_and_export(self) -> None:
        self.step("4. Services and exports")
        east, west, partner = (self.clusters[n] for n in ("east", "west", "partner"))
        east.register("web-1", "web", 8080, ttl=True)
        east.register("web-2", "web", 8081, ttl=True)
        east.register("db-1", "db", 5432)
        west.register("api-1", "api", 9000)
        partner.register("billing-1", "billing", 7000)
        east.export({"web": ["west", "partner"], "db": ["west"]})
        west.export({"api": ["east"]})
        partner.export({"billing": ["east"]})
        self.console.print("east:    web-1, web-2 (TTL checks), db-1")
        self.console.print("         exports web -> west, partner; db -> west")
        self.console.print("west:    api-1; exports api -> east")
        self.console.print("partner: billing-1; exports billing -> east")
        for name, peers in EXPECTED_IMPORTS.items():
            cluster = self.clusters[name]
            for peer_name, services in peers.items():
                wait_until(
                    f"{name} to import {sorted(services)} from {peer_name}",
                    partial(_imports_match, cluster, peer_name, services),
                )

    def show_views(self) -> None:
        self.step("5. Each cluster's peerings and imported services")
        for name, peers in EXPECTED_IMPORTS.items():
            cluster = self.clusters[name]
            self.console.print(peering_table(cluster))
            self.console.print(imported_table(cluster, peers))

    def change_health(self) -> None:
        self.step("6. A health change propagates")
        east = self.clusters["east"]
        started = time.monotonic()
        east.call("PUT", "/v1/agent/check/fail/service:web-1")
        self.console.print("east: TTL check service:web-1 failed (PUT /v1/agent/check/fail/...)")
        for name in ("west", "partner"):
            cluster = self.clusters[name]
            wait_until(
                f"web-1 critical on {name}",
                partial(_critical_on, cluster, "web-1"),
                timeout=15.0,
            )
            elapsed = time.monotonic() - started
            self.console.print(
                f"web-1 is [red]critical[/] on {name} (imported from east) "
                f"after [bold]{elapsed * 1000:.0f} ms[/]"
            )
        self.console.print(imported_table(self.clusters["west"], ["east"]))

    def show_metrics(self) -> None:
        self.step("7. Metrics (Prometheus text format)")
        for cluster in self.clusters.values():
            self.console.print(f"{cluster.name:<8} http://{cluster.addr}/metrics")
        for line in metric_lines(self.clusters["west"], METRIC_PREFIXES):
            self.console.print(f"  west: {line}", highlight=False)

    def replay(self) -> None:
        self.step("8. Replay of the stream east -> west, from west's data dir")
        west = self.clusters["west"]
        self.console.print(f"$ peering replay --peer east --data-dir {west.data_dir}")
        output = run_replay("east", west.data_dir).rstrip("\n")
        self.console.print(output, highlight=False, markup=False, soft_wrap=True)

    def keep(self) -> None:
        self.step("Left running (--keep)")
        for cluster in self.clusters.values():
            self.console.print(
                f"{cluster.name:<8} PEERING_HTTP_ADDR={cluster.addr} peering list    "
                f"(pid {cluster.pid}, log {cluster.log_path})"
            )
        for name, broker in self.brokers.items():
            self.console.print(f"kafka {name:<8} {broker.bootstrap} (pid {broker.pid})")
        pids = [c.pid for c in self.clusters.values()] + [b.pid for b in self.brokers.values()]
        self.console.print(f"stop everything with: kill {' '.join(str(p) for p in pids)}")
        self.console.print(f"state in {self.work}")
        for cluster in self.clusters.values():
            cluster.detach()
        self.brokers.clear()

    def close(self) -> None:
        """Stop the agents (SIGTERM), then the brokers; safe to call twice."""
        stopped = []
        for cluster in self.clusters.values():
            if cluster.pid is not None:
                cluster.stop()
                stopped.append(cluster.name)
        for name, broker in self.brokers.items():
            broker.stop()
            stopped.append(f"kafka {name}")
        self.brokers.clear()
        if stopped:
            self.console.print(f"stopped {', '.join(stopped)}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _prepare(data_dir: Path | None) -> Path:
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="peering-demo-"))
    if data_dir.exists() and any(data_dir.iterdir()):
        raise DemoError(f"--data-dir {data_dir} is not empty: pick a new directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir.resolve()


def run_demo(*, keep: bool = False, data_dir: Path | None = None) -> int:
    # Piped output (CI, tests) gets a wide console so that tables and rows are not wrapped.
    console = Console(width=None if sys.stdout.isatty() else 120)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    demo: Demo | None = None
    code = 1
    try:
        work = _prepare(data_dir)
        demo = Demo(work, console)
        console.rule("[bold]Peering Agent demo")
        started = time.monotonic()
        demo.start_kafkas()
        demo.start_agents()
        demo.peer_clusters()
        demo.register_and_export()
        demo.show_views()
        demo.change_health()
        demo.show_metrics()
        demo.replay()
        if keep:
            demo.keep()
        else:
            demo.step("9. Stopping")
            demo.close()
        console.print(f"[green]demo finished[/] in {time.monotonic() - started:.1f}s")
        code = 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything[/]")
        code = 130
    except Exception as error:  # the demo shows one line, never a traceback
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = f" (logs in {demo.work})" if demo is not None else ""
        console.print(f"demo failed: {message}{where}", style="red", highlight=False, markup=False)
    finally:
        if demo is not None:
            if code != 0:
                _close_quietly(demo)
            # After a failure the work dir stays: its agent and broker logs explain it.
            if data_dir is None and not keep and code in (0, 130):
                shutil.rmtree(demo.work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    return code


def _close_quietly(demo: Demo) -> None:
    """Cleanup after a failure or Ctrl-C: a second Ctrl-C must not leave processes behind."""
    for _ in range(3):
        try:
            demo.close()
            return
        except KeyboardInterrupt:
            continue
