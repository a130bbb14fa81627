"""The agent as a process: crash recovery, clean stop, start-up errors, services file, CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from agent.config import AgentConfig
from agent.notifier import IndexNotifier
from agent.runtime import Extension, reload_due, run_agent
from agent.store import Store
from tests.agent_fixtures import AgentProcess, cli_env, free_port, peering_command

# Fixtures bound here until tests/conftest.py registers tests.agent_fixtures as a plugin.

pytestmark = pytest.mark.timeout(90)


def peering(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        peering_command(*args),
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sigkill_restart_keeps_catalog_checks_and_config(agent_process: AgentProcess) -> None:
    """After SIGKILL and restart on the same data dir, catalog, checks and exports are intact."""
    with agent_process.client() as http:
        http.put(
            "/v1/agent/service/register",
            json={"Name": "web", "ID": "web-1", "Port": 80, "Check": {"TTL": "1h"}},
        ).raise_for_status()
        http.put("/v1/agent/check/pass/service:web-1?note=fine").raise_for_status()
        entry = {
            "Kind": "exported-services",
            "Services": [{"Name": "web", "Consumers": [{"Peer": "beta"}]}],
        }
        http.put("/v1/config", json=entry).raise_for_status()
        before_index = int(http.get("/v1/catalog/services").headers["X-Consul-Index"])
    agent_process.kill()
    agent_process.restart()
    with agent_process.client() as http:
        [h] = http.get("/v1/health/service/web?passing").json()
        assert h["Service"]["Port"] == 80
        assert h["Checks"][0]["Status"] == "passing"
        assert h["Checks"][0]["Output"] == "fine"
        got = http.get("/v1/config/exported-services/default").json()
        assert got["Services"] == [{"Name": "web", "Consumers": [{"Peer": "beta"}]}]
        assert http.get("/v1/exported-services").json() == [
            {"Service": "web", "Consumers": {"Peers": ["beta"]}}
        ]
        assert int(http.get("/v1/catalog/services").headers["X-Consul-Index"]) >= before_index
    store = Store.open(agent_process.data_dir)
    try:
        assert list(store.exported_view("beta")) == ["web-1"]
        assert store.last_exported_seq("beta") > 0
    finally:
        store.close()


def test_sigterm_stops_within_5s_with_open_blocking_query(agent_process: AgentProcess) -> None:
    """SIGTERM stops the agent cleanly (exit 0) in under 5 s even with a blocking query open."""
    with agent_process.client() as http:
        index = http.get("/v1/catalog/services").headers["X-Consul-Index"]

    async def main() -> None:
        async with httpx.AsyncClient(base_url=agent_process.url, timeout=30) as client:

            async def blocker() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(f"/v1/catalog/services?index={index}&wait=60s")

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocker)
                await anyio.sleep(0.3)
                assert agent_process.proc is not None
                started = time.monotonic()
                code = await anyio.to_thread.run_sync(agent_process.stop, 5.0)
                assert code == 0
                assert time.monotonic() - started < 5
                tg.cancel_scope.cancel()

    anyio.run(main)
    assert "received SIGTERM, stopping" in agent_process.log()
    assert "Traceback" not in agent_process.log()


def test_sigint_stops_cleanly(agent_process: AgentProcess) -> None:
    """SIGINT (Ctrl-C) also stops the agent with exit code 0."""
    assert agent_process.proc is not None
    proc = agent_process.proc
    proc.send_signal(signal.SIGINT)
    assert proc.wait(5) == 0
    agent_process.proc = None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Bad_Name", "--kafka", "h:1"], "invalid config: name:"),
        (["--name", "alpha"], "invalid config: kafka: missing"),
        (["--name", "alpha", "--kafka", "nohost"], "invalid config: kafka: expected HOST:PORT"),
        (["--name", "alpha", "--kafka", "h:1", "--http", "x"], "invalid config: http:"),
        (
            ["--name", "alpha", "--kafka", "h:1", "--log-format", "xml"],
            "invalid config: log_format:",
        ),
    ],
)
def test_invalid_config_exits_1_with_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    """An invalid config stops start-up with exit 1 and one line naming the field."""
    result = peering("agent", "--data-dir", str(tmp_path), *args)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_env_config_file_and_flags(tmp_path: Path) -> None:
    """A bad PEERING_* env value is reported like a bad flag; a bad file value names the field."""
    result = peering(
        "agent", "--name", "alpha", env={"PEERING_KAFKA": "h:1", "PEERING_HEARTBEAT_INTERVAL": "0"}
    )
    assert result.returncode == 1
    assert "heartbeat_interval" in result.stderr
    cfg = tmp_path / "agent.toml"
    cfg.write_text('name = "alpha"\nkafka = ["h:1"]\nbogus = 1\n')
    result = peering("agent", "--config", str(cfg))
    assert result.returncode == 1
    assert "invalid config: bogus: unknown field" in result.stderr


def second_agent(http: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``peering agent`` named beta on ``http`` and ``data_dir``, to its exit."""
    return peering(
        "agent", "--name", "beta", "--kafka", "h:1", "--http", http, "--data-dir", str(data_dir)
    )


def test_a_second_agent_on_the_same_data_dir_is_refused(agent_process: AgentProcess) -> None:
    """Two agents on one data dir would publish the same streams with the same Seqs: the
    second exits 1 with a line naming the first one's pid, and the first keeps serving with
    its state intact. Once the first has stopped (here: killed), the dir is free again."""
    assert agent_process.proc is not None
    first_pid = agent_process.proc.pid
    with agent_process.client() as http:
        http.put("/v1/agent/service/register", json={"Name": "kept", "ID": "kept-1"})
    result = second_agent(f"127.0.0.1:{free_port()}", agent_process.data_dir)
    assert result.returncode == 1
    assert f"is in use by another agent (pid {first_pid})" in result.stderr
    assert "Traceback" not in result.stderr
    with agent_process.client() as http:
        assert [e["Service"]["ID"] for e in http.get("/v1/health/service/kept").json()] == [
            "kept-1"
        ]
    agent_process.restart()  # killed first, as in a crash: the kernel drops the lock
    with agent_process.client() as http:
        assert [e["Service"]["ID"] for e in http.get("/v1/health/service/kept").json()] == [
            "kept-1"
        ]


def test_port_in_use_is_a_clear_error(agent_process: AgentProcess, tmp_path: Path) -> None:
    """A second agent on a busy port exits 1 with a line saying it cannot listen."""
    result = second_agent(agent_process.addr, tmp_path)
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


def test_ttl_check_expires_in_running_agent(agent_process: AgentProcess) -> None:
    """A passing TTL check without heartbeats turns critical with 'TTL expired'."""
    with agent_process.client() as http:
        http.put(
            "/v1/agent/service/register", json={"Name": "ttl", "Check": {"TTL": "1s"}}
        ).raise_for_status()
        http.put("/v1/agent/check/pass/service:ttl").raise_for_status()
        assert len(http.get("/v1/health/service/ttl?passing").json()) == 1

        def critical() -> bool:
            [h] = http.get("/v1/health/service/ttl").json()
            return bool(
                h["Checks"][0]["Status"] == "critical" and h["Checks"][0]["Output"] == "TTL expired"
            )

        wait_until(critical, timeout=10)


def test_services_file_load_reload_and_bad_file(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """The services file registers at start, reloads on change, and a bad file keeps the old set."""
    services = tmp_path / "services.toml"
    services.write_text('[[services]]\nName = "static"\nID = "static-1"\nPort = 1\n')
    agent = agent_factory(extra_args=["--services-file", str(services)])
    with agent.client() as http:
        assert [e["ServiceID"] for e in http.get("/v1/catalog/service/static").json()] == [
            "static-1"
        ]
        http.put("/v1/agent/service/register", json={"Name": "dynamic"}).raise_for_status()

        services.write_text('[[services]]\nName = "static"\nID = "static-2"\nPort = 2\n')
        wait_until(
            lambda: (
                [e["ServiceID"] for e in http.get("/v1/catalog/service/static").json()]
                == ["static-2"]
            )
        )
        assert "dynamic" in http.get("/v1/catalog/services").json()  # API registrations untouched

        services.write_text("[[services]\nbroken")
        wait_until(lambda: "services file" in agent.log() and "ignored" in agent.log())
        assert [e["ServiceID"] for e in http.get("/v1/catalog/service/static").json()] == [
            "static-2"
        ]
        assert 'peering_services_file_reloads_total{result="error"}' in http.get("/metrics").text


def test_services_file_is_read_once_it_stops_changing() -> None:
    """A changed file is re-read only when two polls in a row saw the same mtime and size:
    a writer still appending (no atomic rename) is not read half-way."""
    old, growing, done = (1, 10), (2, 20), (3, 30)
    assert not reload_due(old, old, old)  # nothing new
    assert not reload_due(old, old, growing)  # just changed: wait one poll
    assert not reload_due(old, growing, done)  # still changing
    assert reload_due(old, done, done)  # settled: read it
    assert not reload_due(done, done, done)  # and only once
    assert not reload_due(done, done, None)  # just removed: wait one poll
    assert reload_due(done, None, None)  # still gone: read it (an error, registrations stay)


def test_json_services_file(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    """A JSON services file works too, including TTL checks."""
    services = tmp_path / "services.json"
    services.write_text(json.dumps({"services": [{"Name": "js", "Check": {"TTL": "30s"}}]}))
    agent = agent_factory(extra_args=["--services-file", str(services)])
    with agent.client() as http:
        [h] = http.get("/v1/health/service/js").json()
        assert h["Checks"][0]["CheckID"] == "service:js"


def test_cli_verbs_against_running_agent(agent_process: AgentProcess) -> None:
    """register, services, export and deregister work end to end, in table and JSON form."""
    env = {"PEERING_HTTP_ADDR": agent_process.addr}
    r = peering(
        "register",
        "api",
        "--id",
        "api-1",
        "--port",
        "9000",
        "--tag",
        "v1",
        "--meta",
        "team=x",
        "--ttl",
        "30s",
        env=env,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "registered api-1")
    r = peering("export", "api", "--peer", "beta", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Services"] == [{"Name": "api", "Consumers": [{"Peer": "beta"}]}]
    r = peering("services", "--format", "json", env=env)
    assert json.loads(r.stdout) == [
        {"Name": "api", "Tags": ["v1"], "Instances": 1, "Passing": 0, "ExportedTo": ["beta"]}
    ]
    r = peering("services", "--http-addr", agent_process.addr)
    assert r.returncode == 0
    assert "api" in r.stdout
    assert "beta" in r.stdout
    r = peering("export", "api", "--peer", "beta", "--remove", env=env)
    assert r.returncode == 0
    assert "no longer exported" in r.stdout
    r = peering("deregister", "api-1", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "deregistered api-1")
    r = peering("services", "--format", "json", env=env)
    assert json.loads(r.stdout) == []


def test_cli_errors_are_one_line(agent_process: AgentProcess) -> None:
    """Refusals, bad input and an unreachable agent give one line on stderr and exit 1."""
    env = {"PEERING_HTTP_ADDR": agent_process.addr}
    cases = [
        (["deregister", "nope"], "Unknown service ID"),
        (["register", "bad name"], "invalid service name"),
        (["register", "x", "--meta", "novalue"], "--meta expects KEY=VALUE"),
        (["export", "api", "--peer", "Bad"], "invalid peer name"),
        (["services", "--http-addr", f"127.0.0.1:{free_port()}"], "cannot reach the agent"),
    ]
    for args, message in cases:
        r = peering(*args, env=env)
        assert r.returncode == 1, args
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_crashing_child_stops_agent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A supervised task that raises stops the whole agent with a log line naming the task."""

    async def boom() -> None:
        await anyio.sleep(0.2)
        raise RuntimeError("boom")

    def extension(store: Store, notifier: IndexNotifier, config: AgentConfig) -> Extension:
        return Extension(tasks=[("exploder", boom)])

    config = AgentConfig(
        name="alpha", kafka=("h:1",), http=f"127.0.0.1:{free_port()}", data_dir=str(tmp_path)
    )

    async def main() -> None:
        with anyio.fail_after(10):
            await run_agent(config, extensions=[extension])

    caplog.set_level(logging.ERROR, logger="agent")
    with pytest.raises(BaseExceptionGroup) as info:
        anyio.run(main)
    assert info.group_contains(RuntimeError, match="boom")
    assert "task exploder failed, stopping the agent: RuntimeError: boom" in caplog.text
    # The HTTP port was released: nothing is left half alive.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{config.http}/v1/status/leader", timeout=1)


def test_extension_routes_are_served(tmp_path: Path) -> None:
    """Routes from an Extension (the peering seam) are served next to the core API."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("peering here")

    def extension(store: Store, notifier: IndexNotifier, config: AgentConfig) -> Extension:
        return Extension(routes=[Route("/v1/peerings", hello)])

    config = AgentConfig(
        name="alpha", kafka=("h:1",), http=f"127.0.0.1:{free_port()}", data_dir=str(tmp_path)
    )

    async def main() -> str:
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: run_agent(
                    config, extensions=[extension], task_status=task_status
                )
            )
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://{config.http}/v1/peerings")).text
            tg.cancel_scope.cancel()
        return text

    assert anyio.run(main) == "peering here"


def test_config_file_settings_apply(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """Settings from --config (JSON logs, services file) apply under the CLI flags."""
    services = tmp_path / "svc.json"
    services.write_text('[{"Name": "from-config"}]')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'name = "ignored"\nkafka = ["h:1"]\nlog_format = "json"\nservices_file = "{services}"\n'
    )
    agent = agent_factory(name="gamma", extra_args=["--config", str(cfg)])
    with agent.client() as http:
        assert "from-config" in http.get("/v1/catalog/services").json()
        assert http.get("/v1/agent/self").json()["Config"]["Datacenter"] == "gamma"
    first = agent.log().splitlines()[0]
    assert json.loads(first)["level"] == "info"


def test_kafka_client_log_flood_is_rate_limited() -> None:
    """A burst of identical aiokafka errors logs once, then once more with the count."""
    import logging

    from agent.runtime import _RateLimit

    limit = _RateLimit("aiokafka", 30.0)
    records = [
        logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "Unable connect", (), None)
        for _ in range(100)
    ]
    for i, record in enumerate(records):
        record.created = 1000.0 + i * 0.01
    passed = [r for r in records if limit.filter(r)]
    assert len(passed) == 1
    later = logging.LogRecord(
        "aiokafka.conn", logging.ERROR, __file__, 1, "Unable connect", (), None
    )
    later.created = 1031.0
    assert limit.filter(later)
    assert "99 more like it" in later.getMessage()
    ours = logging.LogRecord("agent.peering", logging.WARNING, __file__, 1, "x", (), None)
    assert all(limit.filter(ours) for _ in range(5))
