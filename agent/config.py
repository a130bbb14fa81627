"""Agent configuration: one frozen Struct, merged from defaults < TOML file < env < flags.

Loading is a thin shell (it reads one file); merging and validation are plain functions so that
every bad value is reported the same way: a ConfigError whose message is one line naming the
field, e.g. ``invalid config: heartbeat_interval: Expected `float` >= 0.1``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from agent.kafka_client import KafkaSecurity, KafkaSettings
from agent.names import InvalidName, validate_cluster_name

ENV_PREFIX = "PEERING_"


class ConfigError(Exception):
    """The configuration cannot be used; str(error) is one line naming the field."""


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything ``peering agent`` needs to start. Field names are the TOML keys."""

    name: str
    # Kafka bootstrap servers (HOST:PORT); not dialled by the agent core yet, only validated.
    kafka: tuple[str, ...]
    http: str = "127.0.0.1:8500"
    data_dir: str = "data"
    services_file: str | None = None
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    heartbeat_interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600.0)] = 5.0
    # What peers are told to dial when this agent is the acceptor; defaults to ``kafka``.
    advertise_kafka: tuple[str, ...] | None = None
    # Address shown as the node address in catalog answers; defaults to the HTTP host.
    advertise_addr: str | None = None
    # Peering: how long an establish call waits for the acceptor's answer, how long a token
    # stays valid, and how long stream topics outlive a deleted peering (so that the peer
    # reads the Terminated record even if it was offline for a while).
    establish_timeout: Annotated[float, msgspec.Meta(ge=1.0, le=600.0)] = 30.0
    token_ttl: Annotated[float, msgspec.Meta(ge=1.0, le=30 * 86400.0)] = 86400.0
    delete_grace: Annotated[float, msgspec.Meta(ge=0.0, le=7 * 86400.0)] = 30.0
    # TLS/SASL for the home Kafka (``kafka``), and for Kafka clusters reached through tokens,
    # matched by any of their bootstrap servers.
    kafka_security: KafkaSecurity = msgspec.field(default_factory=KafkaSecurity)
    kafka_clusters: tuple[KafkaSettings, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 512 * 1024
    ttl_tick_seconds: Annotated[float, msgspec.Meta(ge=0.05, le=60.0)] = 0.5

    @property
    def http_host(self) -> str:
        return split_host_port(self.http, "http")[0]

    @property
    def http_port(self) -> int:
        return split_host_port(self.http, "http")[1]

    @property
    def node_address(self) -> str:
        if self.advertise_addr:
            return self.advertise_addr
        host = self.http_host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# Fields whose env/flag value is a comma separated list.
_LIST_FIELDS = frozenset({"kafka", "advertise_kafka"})
_FIELDS = frozenset(AgentConfig.__struct_fields__)


def split_host_port(value: str, field: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too); ConfigError names ``field`` when it is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"invalid config: {field}: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"invalid config: {field}: port {port} is out of range 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid config: {field}: bad IPv6 address in {value!r}") from None
    if any(ch.isspace() or ch in "/,@" for ch in host):
        raise ConfigError(f"invalid config: {field}: bad host in {value!r}")
    return host, port


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def from_env(env: Mapping[str, str]) -> dict[str, object]:
    """The ``PEERING_*`` variables that name a config field (PEERING_DATA_DIR -> data_dir)."""
    out: dict[str, object] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key[len(ENV_PREFIX) :].lower()
        if field in _FIELDS:
            out[field] = _split_list(value) if field in _LIST_FIELDS else value
    return out


def read_file(path: Path) -> dict[str, object]:
    """Parse a TOML config file; any problem is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid config: cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"invalid config: {unknown[0]}: unknown field in {path}")
    return dict(data)


def merge(*layers: Mapping[str, object]) -> dict[str, object]:
    """Later layers win; ``None`` in a layer means "not given" (flags left unset)."""
    out: dict[str, object] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is not None:
                out[key] = _split_list(value) if key in _LIST_FIELDS else value
    return out


def validate(raw: Mapping[str, object]) -> AgentConfig:
    """Turn merged raw values into an AgentConfig or raise a one-line ConfigError."""
    for required in ("name", "kafka"):
        if required not in raw:
            raise ConfigError(
                f"invalid config: {required}: missing (use --{required}, "
                f"{ENV_PREFIX}{required.upper()} or the config file)"
            )
    try:
        # strict=False: env vars and flags arrive as strings ("5" for a float field).
        config = msgspec.convert(dict(raw), AgentConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    try:
        validate_cluster_name(config.name)
    except InvalidName as exc:
        raise ConfigError(f"invalid config: name: {exc}") from None
    if not config.kafka:
        raise ConfigError("invalid config: kafka: at least one HOST:PORT is required")
    for server in config.kafka:
        split_host_port(server, "kafka")
    for server in config.advertise_kafka or ():
        split_host_port(server, "advertise_kafka")
    split_host_port(config.http, "http")
    if not config.data_dir.strip():
        raise ConfigError("invalid config: data_dir: must not be empty")
    return config


def _one_line(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `float` >= 0.1 - at `$.heartbeat_interval`"; put the field first.
    message = str(exc).splitlines()[0]
    text, sep, where = message.rpartition(" - at `$.")
    if sep:
        field = where.rstrip("`").split("[")[0].split(".")[0]
        return f"invalid config: {field}: {text}"
    if "unknown field" in message:
        field = message.split("`")[1] if "`" in message else "?"
        return f"invalid config: {field}: unknown field"
    return f"invalid config: {message}"


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Defaults < TOML file < ``PEERING_*`` env < CLI flags, validated."""
    file_layer = read_file(config_file) if config_file is not None else {}
    env_layer = from_env(os.environ if env is None else env)
    return validate(merge(file_layer, env_layer, flags or {}))
