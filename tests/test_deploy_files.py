"""Deployment files agree with the code: compose demo, Dockerfile, systemd unit, example configs.

No Docker engine runs here, so these checks are static: they parse each file and hold it against
the real CLI (``agent.cli.app``), the real config loader and pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import typer
import typer.core
import yaml

from agent.cli import app
from agent.config import AgentConfig, load_config

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UNIT_FILE = REPO / "ops" / "systemd" / "peering-agent.service"
EXAMPLE_CONFIG = REPO / "ops" / "config" / "agent.example.toml"
TLS_SASL_EXAMPLE = REPO / "ops" / "config" / "kafka-tls-sasl.example.toml"

AGENTS = ("east", "west", "partner")
EXPECTED_SERVICES = {
    "kafka-main",
    "kafka-partner",
    *AGENTS,
    "setup",
    "prometheus",
    "grafana",
}
# Per Kafka cluster TLS/SASL keys (tables [kafka_security] and [[kafka_clusters]]).
KAFKA_TABLES = ("[kafka_security]", "[[kafka_clusters]]")
KAFKA_KEYS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)
REQUIRED_FIELDS = ("name", "kafka")
# Tables are documented by their header line rather than a `key = value` line.
TABLE_FIELDS = frozenset({"kafka_security", "kafka_clusters"})
HARDENING = {
    "DynamicUser": "yes",
    "StateDirectory": "peering-agent",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "MemoryDenyWriteExecute": "yes",
    "Restart": "on-failure",
    "TimeoutStopSec": "10",
    "EnvironmentFile": "-/etc/peering-agent/env",
}


@cache
def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _cli() -> typer.core.TyperGroup:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return group


def _parse(argv: list[str]) -> Any:
    """Parse ``peering ARGV`` with the real CLI without running the command."""
    verb, *args = argv
    command = _cli().commands.get(verb)
    assert command is not None, f"peering has no verb {verb!r}"
    return command.make_context(verb, args)


def _bind_mounts(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(host source, container target) of a service's bind mounts, short or long syntax."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/", "~")):
            yield source, rest.split(":")[0]


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _setup_commands() -> list[list[str]]:
    """Each ``peering ...`` command line in the setup script, as argv without ``peering``."""
    script = "\n".join(_services()["setup"]["command"]).replace("$$", "$")
    commands = []
    for line in script.splitlines():
        match = re.fullmatch(r"\s*(?:\w+=\$\()?peering\s+(.*?)\)?\s*", line)
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def test_compose_parses_with_the_expected_services() -> None:
    """The compose file is valid YAML with the three-cluster demo's services, and nothing else."""
    assert set(_services()) == EXPECTED_SERVICES


def test_every_service_has_an_image_or_a_build() -> None:
    """Each service names a pinned image or a build whose context and Dockerfile exist."""
    for name, service in _services().items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            build = service["build"]
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert context == REPO, name
            assert (context / build["dockerfile"]).is_file(), name
        elif "image" in service:
            image = service["image"]
            assert ":" in image, f"{name}: pin a tag"
            assert not image.endswith(":latest"), f"{name}: pin a tag, not latest"


def test_mounted_host_files_exist() -> None:
    """Every bind-mounted host path exists in the repository; named volumes are declared."""
    declared = set(_compose().get("volumes") or {})
    missing = []
    for name, service in _services().items():
        for source, _target in _bind_mounts(service):
            path = (COMPOSE_DIR / source).resolve()
            assert path.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            if not path.exists():
                missing.append(f"{name}: {source}")
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: undeclared volume {volume}"
    assert not missing, f"mounted files missing from the repository: {missing}"


def test_observability_mounts_point_at_ops() -> None:
    """Prometheus gets the ops/ scrape config and rules; Grafana the ops/ provisioning."""
    services = _services()
    prometheus = dict(_bind_mounts(services["prometheus"]))
    assert prometheus["../ops/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prometheus["../ops/prometheus/rules"] == "/etc/prometheus/rules"
    assert (REPO / "ops/prometheus/rules/peering.rules.yml").is_file()
    grafana = dict(_bind_mounts(services["grafana"]))
    assert grafana["../ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (COMPOSE_DIR / "../ops/grafana/dashboards/peering.json").resolve().is_file()
    assert "../ops/grafana/dashboards" in grafana


def test_host_ports_are_unique() -> None:
    """No two published ports collide on the host."""
    seen: dict[str, str] = {}
    for name, service in _services().items():
        for port in service.get("ports", []):
            host_port = str(port).rsplit(":", 1)[0]
            assert host_port not in seen, f"{name} and {seen[host_port]} both publish {host_port}"
            seen[host_port] = name
    assert {"8501", "8502", "8503", "9090", "3000"} <= set(seen)


def test_agent_command_lines_parse_with_the_cli() -> None:
    """Each agent's command parses with `peering agent` and yields a valid AgentConfig."""
    services = _services()
    for name in AGENTS:
        service = services[name]
        assert "entrypoint" not in service, "the image's entrypoint is `peering`"
        ctx = _parse(service["command"])
        assert ctx.command.name == "agent"
        params = ctx.params
        assert params["name"] == name
        env = _environment(service)
        for key in env:
            assert key.startswith("PEERING_"), f"{name}: {key}"
            assert key.removeprefix("PEERING_").lower() in AgentConfig.__struct_fields__, key
        flags = {key: value for key, value in params.items() if key != "config"}
        flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
        cfg = load_config(None, env=env, flags=flags)
        assert cfg.http_port == 8500, "healthcheck and port mappings assume 8500"
        assert any(p.endswith(":8500") for p in service["ports"]), name


def test_agents_dial_a_kafka_listener_advertised_in_compose() -> None:
    """`--kafka` of each agent is an advertised listener of a Kafka service it depends on."""
    services = _services()
    for name in AGENTS:
        ctx = _parse(services[name]["command"])
        for server in ctx.params["kafka"].split(","):
            host = server.rsplit(":", 1)[0]
            kafka = services[host]
            assert kafka["image"].startswith("apache/kafka:"), host
            advertised = _environment(kafka)["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{server}" in advertised, f"{name}: {server} is not advertised"
            assert host in services[name]["depends_on"], f"{name} must wait for {host}"


def test_setup_uses_only_cli_verbs() -> None:
    """`setup` calls only existing verbs, with flags the CLI accepts."""
    commands = _setup_commands()
    assert commands, "no peering command found in the setup script"
    present = set(_cli().commands)
    used = set()
    for argv in commands:
        verb = argv[0]
        used.add(verb)
        assert verb in present, f"setup uses unknown verb {verb!r}"
        http_addr = _parse(argv).params["http_addr"]
        assert http_addr.rsplit(":", 1)[0] in AGENTS, f"{argv}: not one of the agents"
    assert {"register", "export", "generate-token", "establish"} <= used
    assert set(_services()["setup"]["depends_on"]) == set(AGENTS)


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    """The image runs `peering`, the console script pyproject.toml declares, as non-root."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["peering"] == "agent.cli:main"
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE)
    assert [json.loads(e) for e in entrypoints] == [["peering"]]
    last_stage = text.rsplit("\nFROM ", 1)[1]
    assert last_stage.startswith("python:3.11-slim")
    users = re.findall(r"^USER\s+(\S+)", last_stage, re.MULTILINE)
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "/v1/status/leader" in text


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], pattern[3:]):
                return True
    return False


def test_dockerfile_copies_what_the_wheel_needs() -> None:
    """COPY sources exist, survive .dockerignore, and cover every path the wheel build reads."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".git", ".venv", ".cache", "data"):
        assert _ignored(needed, patterns), f".dockerignore must exclude {needed}"
    sources = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = ["pyproject.toml", pyproject["project"]["readme"], *wheel["packages"]]
    needed += list(wheel.get("force-include", {}))
    for path in needed:
        assert path in sources, f"the wheel build needs {path}; COPY it in compose/Dockerfile"


def _unit_entries() -> dict[str, list[str]]:
    """systemd unit keys to their values (a key may repeat), comments dropped."""
    entries: dict[str, list[str]] = {}
    for raw in UNIT_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_unit_is_hardened() -> None:
    """The unit sets every hardening option we promise, with the expected values."""
    entries = _unit_entries()
    for key, value in HARDENING.items():
        assert value in entries.get(key, []), f"{key}={value} missing from the unit"


def test_systemd_exec_start_parses_with_the_cli() -> None:
    """ExecStart runs `peering agent --config /etc/peering-agent/agent.toml`, a valid command."""
    (exec_start,) = _unit_entries()["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/peering"
    ctx = _parse(argv[1:])
    assert ctx.command.name == "agent"
    assert ctx.params["config"] == Path("/etc/peering-agent/agent.toml")


def test_example_configs_load() -> None:
    """Both example configs load with the real loader."""
    for path in (EXAMPLE_CONFIG, TLS_SASL_EXAMPLE):
        cfg = load_config(path, env={})
        assert cfg.name == "east", path


def _uncommented(text: str) -> str:
    """The TOML with every commented-out option and table header (``# key = ...``) enabled."""
    option = re.compile(r"# (\[\[?\w+\]\]?|\w+ = .*)")
    return "\n".join(line[2:] if option.fullmatch(line) else line for line in text.splitlines())


def test_example_config_documents_every_field() -> None:
    """Every AgentConfig field has a line in the example, showing its default when it has one."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    defaults = AgentConfig(name="x", kafka=("x:1",))
    documented = tomllib.loads(_uncommented(text))
    loaded = load_config(EXAMPLE_CONFIG, env={})
    set_keys = set(tomllib.loads(text))
    for field in AgentConfig.__struct_fields__:
        assert re.search(rf"^(# )?({field} = |\[\[?{field}\]\]?$)", text, re.MULTILINE), (
            f"{field} is not documented in {EXAMPLE_CONFIG.name}"
        )
        default = getattr(defaults, field)
        if field in REQUIRED_FIELDS or field in TABLE_FIELDS or default is None:
            continue
        if field in set_keys:
            assert getattr(loaded, field) == default, f"{field}: the example is not the default"
        else:
            assert documented[field] == default, f"{field}: the comment is not the default"


def test_uncommenting_the_examples_gives_valid_configs(tmp_path: Path) -> None:
    """Enabling every commented option still gives a valid config."""
    for path in (EXAMPLE_CONFIG, TLS_SASL_EXAMPLE):
        full = _uncommented(path.read_text(encoding="utf-8"))
        unknown = set(tomllib.loads(full)) - set(AgentConfig.__struct_fields__)
        assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
        target = tmp_path / path.name
        target.write_text(full, encoding="utf-8")
        load_config(target, env={})


def test_examples_show_the_kafka_security_keys() -> None:
    """Both examples show the TLS/SASL tables and every key of them; SASL_SSL + SCRAM-SHA-512."""
    for path in (EXAMPLE_CONFIG, TLS_SASL_EXAMPLE):
        text = path.read_text(encoding="utf-8")
        for table in KAFKA_TABLES:
            assert re.search(rf"^(# )?{re.escape(table)}$", text, re.MULTILINE), path.name
        for key in (*KAFKA_KEYS, "bootstrap"):
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{path.name}: {key}"
    tls = tomllib.loads(_uncommented(TLS_SASL_EXAMPLE.read_text(encoding="utf-8")))
    for security in (tls["kafka_security"], *tls["kafka_clusters"]):
        assert security["security_protocol"] == "SASL_SSL"
        assert security["sasl_mechanism"] == "SCRAM-SHA-512"
