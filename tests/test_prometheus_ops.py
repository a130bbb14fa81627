"""ops/prometheus and ops/grafana: promtool checks, rule unit tests, the dashboard's queries
run against a real Prometheus, and every metric name checked against docs/metrics.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type information

from tests.prometheus_fixture import (
    AGENT_JOB,
    PROMETHEUS_OPS,
    REPO,
    RULES_FILE,
    PrometheusFactory,
    PrometheusServer,
    fast_rules,
    free_port,
    start_prometheus,
)

CONFIG_FILE = PROMETHEUS_OPS / "prometheus.yml"
RULES_TEST_FILE = PROMETHEUS_OPS / "tests" / "peering.rules.test.yml"
INSTALL_SCRIPT = PROMETHEUS_OPS / "install.sh"
DASHBOARD_FILE = REPO / "ops" / "grafana" / "dashboards" / "peering.json"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Fields of upstream Prometheus' consul_sd_config (Debian's build has no Consul SD at all).
CONSUL_SD_FIELDS = {
    "server",
    "path_prefix",
    "token",
    "datacenter",
    "namespace",
    "partition",
    "scheme",
    "services",
    "tags",
    "tag_separator",
    "node_meta",
    "allow_stale",
    "refresh_interval",
    "basic_auth",
    "authorization",
    "oauth2",
    "tls_config",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
}
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
# Grafana variables in panel queries and what the query test puts in their place.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def assert_promtool_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES_FILE)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every non-row panel, also those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def substitute_grafana_variables(expr: str) -> str:
    """Make a panel query plain PromQL: intervals become 1m/1h, $var and ${var} become .*"""
    for variable, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{\w+\}|\$\w+", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group()
        if name.lower() in PROMQL_KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def contract_metric_names() -> set[str]:
    """Names in docs/metrics.md's table, with _bucket/_sum/_count for histograms."""
    names = {"up"}
    for name, kind in re.findall(r"^\| `([a-z_]+)` \| (\w+) \|", METRICS_DOC.read_text(), re.M):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def is_contract_metric(name: str, contract: set[str], recorded: set[str]) -> bool:
    if ":" in name:
        return name in recorded
    return name in contract or name.startswith(("process_", "python_"))


def promtool_supports_consul_sd(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text("scrape_configs:\n  - job_name: probe\n    consul_sd_configs: []\n")
    return promtool("check", "config", probe).returncode == 0


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real prometheus with no targets and the project's rules, shared by this module."""
    server = start_prometheus(tmp_path_factory.mktemp("prometheus-empty"))
    try:
        yield server
    finally:
        server.stop()


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """prometheus.yml (and the rules it loads) passes `promtool check config`; with a promtool
    built without Consul SD (Debian's) the Consul SD jobs are left out of the check."""
    config = load_yaml(CONFIG_FILE)
    checked = tmp_path / "prometheus.yml"
    if not promtool_supports_consul_sd(tmp_path):
        config["scrape_configs"] = [
            job for job in config["scrape_configs"] if "consul_sd_configs" not in job
        ]
    config["rule_files"] = [str(CONFIG_FILE.parent / pattern) for pattern in config["rule_files"]]
    checked.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", checked)
    assert_promtool_ok(result)
    assert "peering.rules.yml" in result.stdout, "rule_files must load the peering rules"


def test_scrape_config_discovers_local_and_imported_services() -> None:
    """The config scrapes agents statically and has Consul SD jobs for the local catalog and
    for a peer's imported services (path_prefix /peer/<name>), using upstream fields only."""
    jobs = {job["job_name"]: job for job in load_yaml(CONFIG_FILE)["scrape_configs"]}
    assert jobs[AGENT_JOB]["static_configs"][0]["targets"], "agents need static targets"
    consul_jobs = [job for job in jobs.values() if "consul_sd_configs" in job]
    prefixes = [sd.get("path_prefix") for job in consul_jobs for sd in job["consul_sd_configs"]]
    assert None in prefixes, "a Consul SD job for the local catalog (no path_prefix)"
    assert any(re.fullmatch(r"/peer/[\w.-]+", str(p)) for p in prefixes), prefixes
    for job in consul_jobs:
        for sd in job["consul_sd_configs"]:
            assert set(sd) <= CONSUL_SD_FIELDS, f"{job['job_name']}: {set(sd) - CONSUL_SD_FIELDS}"


def test_rules_pass_promtool_check() -> None:
    """The rules file passes `promtool check rules`."""
    assert_promtool_ok(promtool("check", "rules", RULES_FILE))


def test_rules_unit_tests_pass() -> None:
    """`promtool test rules` passes: alerts fire with the expected labels and annotations."""
    assert_promtool_ok(promtool("test", "rules", RULES_TEST_FILE))


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert has a unit test case where it fires and one where it must stay silent."""
    cases = [
        case
        for test in load_yaml(RULES_TEST_FILE)["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} never silent"


def test_alerts_have_severity_annotations_and_runbook() -> None:
    """Every alert carries a severity and summary/description/runbook_url annotations."""
    expected = {
        "PeeringNotActive",
        "PeeringHeartbeatStale",
        "PeeringRecordsRejected",
        "PeeringConsumerLagGrowing",
        "PeeringResyncLoop",
        "PeeringKafkaDisconnected",
        "PeeringAgentDown",
    }
    assert {rule["alert"] for rule in alert_rules()} == expected
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert re.fullmatch(r"docs/operations\.md#[a-z0-9-]+", annotations["runbook_url"])


def test_dashboard_is_complete_json() -> None:
    """The dashboard is valid JSON; every panel has a datasource and a target with an expr."""
    board = dashboard()
    assert board["uid"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert "peering_state" in variables["peer"]["definition"]
    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] in ("${DS_PROMETHEUS}", "prometheus"), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_queries_run_on_real_prometheus(empty_prometheus: PrometheusServer) -> None:
    """Every panel query and variable query is valid PromQL for a real Prometheus server."""
    failures = []
    for expr in dashboard_exprs():
        body = empty_prometheus.query_response(substitute_grafana_variables(expr))
        if body.get("status") != "success":
            failures.append(f"{expr}\n  -> {body.get('error')}")
    for variable in dashboard()["templating"]["list"]:
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        if match is None:
            continue
        selector = substitute_grafana_variables(match.group(1))
        body = empty_prometheus.api_response(
            f"/api/v1/label/{match.group(2)}/values", {"match[]": selector}
        )
        if body.get("status") != "success":
            failures.append(f"variable {variable['name']}: {definition}\n  -> {body.get('error')}")
    assert not failures, "\n".join(failures)


def test_rules_and_dashboard_use_only_contract_metrics() -> None:
    """Every metric name in the rules and the dashboard is in docs/metrics.md (or is `up`,
    a process_/python_ collector metric, or a recording rule defined in the rules file)."""
    contract = contract_metric_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert "peering_propagation_delay_seconds_bucket" in used, "the parser found no names"
    unknown = sorted(name for name in used if not is_contract_metric(name, contract, recorded))
    assert not unknown, f"not in docs/metrics.md: {unknown}"


def test_prometheus_fixture_loads_rules_and_fires_agent_down(
    tmp_path: Path, empty_prometheus: PrometheusServer
) -> None:
    """The fixture's real Prometheus loads the rules, and PeeringAgentDown fires for an agent
    that does not answer (a free port), with fast_rules' `for: 0s`."""
    groups = empty_prometheus.api("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert {rule.get("alert") or rule.get("record") for rule in rules()} <= loaded
    factory = PrometheusFactory(tmp_path)
    try:
        server = factory.start(
            targets=[f"127.0.0.1:{free_port()}"], rule_files=[fast_rules(RULES_FILE, tmp_path)]
        )
        alerts = server.wait_until(lambda: server.firing("PeeringAgentDown"), timeout=30)
        assert alerts[0]["labels"]["job"] == AGENT_JOB
        assert server.query_value(f'up{{job="{AGENT_JOB}"}}') == 0.0
    finally:
        factory.close()


def test_install_script_is_quiet_when_installed() -> None:
    """install.sh exits 0 and prints nothing when prometheus and promtool are installed."""
    result = subprocess.run(
        [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_install_script_explains_missing_apt(tmp_path: Path) -> None:
    """Without prometheus and without apt-get, install.sh fails with a clear message."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id",):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    result = subprocess.run(
        ["/bin/sh", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    assert result.returncode == 1
    assert "apt-get is not available" in result.stderr
