"""Agent config: precedence of flags, env and file, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, LogFormat, load_config

BASE = {"name": "alpha", "kafka": "127.0.0.1:9092"}


def test_defaults() -> None:
    """Only name and kafka are required; the rest has documented defaults."""
    cfg = load_config(env={}, flags=BASE)
    assert cfg == AgentConfig(name="alpha", kafka=("127.0.0.1:9092",))
    assert cfg.http == "127.0.0.1:8500"
    assert cfg.heartbeat_interval == 5.0
    assert cfg.max_body_bytes == 512 * 1024


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    """Flags > PEERING_* env > TOML file > defaults, field by field."""
    file = tmp_path / "agent.toml"
    file.write_text(
        'name = "fromfile"\nkafka = ["f:1"]\nhttp = "127.0.0.1:1111"\n'
        'data_dir = "/file"\nheartbeat_interval = 2.0\n'
    )
    env = {"PEERING_HTTP": "127.0.0.1:2222", "PEERING_DATA_DIR": "/env", "PEERING_NAME": "fromenv"}
    cfg = load_config(file, env=env, flags={"name": "fromflag", "kafka": None})
    assert cfg.name == "fromflag"
    assert cfg.kafka == ("f:1",)
    assert cfg.http == "127.0.0.1:2222"
    assert cfg.data_dir == "/env"
    assert cfg.heartbeat_interval == 2.0


def test_env_values_are_converted() -> None:
    """Env strings become floats, enums and comma-separated lists."""
    env = {
        "PEERING_NAME": "alpha",
        "PEERING_KAFKA": "a:1, b:2",
        "PEERING_HEARTBEAT_INTERVAL": "0.5",
        "PEERING_LOG_FORMAT": "json",
        "PEERING_HTTP_ADDR": "ignored:1",
    }
    cfg = load_config(env=env)
    assert cfg.kafka == ("a:1", "b:2")
    assert cfg.heartbeat_interval == 0.5
    assert cfg.log_format is LogFormat.JSON


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"name": "alpha"}, "kafka"),
        ({"kafka": "h:1"}, "name"),
        ({**BASE, "name": "Alpha"}, "name"),
        ({**BASE, "name": "a/b"}, "name"),
        ({**BASE, "kafka": "nohost"}, "kafka"),
        ({**BASE, "kafka": "h:99999"}, "kafka"),
        ({**BASE, "kafka": ""}, "kafka"),
        ({**BASE, "http": "localhost"}, "http"),
        ({**BASE, "heartbeat_interval": "0.01"}, "heartbeat_interval"),
        ({**BASE, "heartbeat_interval": "soon"}, "heartbeat_interval"),
        ({**BASE, "log_format": "xml"}, "log_format"),
        ({**BASE, "advertise_kafka": "x"}, "advertise_kafka"),
        ({**BASE, "data_dir": " "}, "data_dir"),
    ],
)
def test_invalid_values_name_the_field(flags: dict[str, str], field: str) -> None:
    """Every invalid value gives ONE line that starts with the offending field."""
    with pytest.raises(ConfigError) as info:
        load_config(env={}, flags=flags)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid config: {field}:")


def test_unknown_field_in_file(tmp_path: Path) -> None:
    """A typo in the TOML file is named, not silently ignored."""
    file = tmp_path / "agent.toml"
    file.write_text('name = "alpha"\nkafka = ["h:1"]\nheartbeat = 3\n')
    with pytest.raises(ConfigError, match=r"^invalid config: heartbeat: unknown field"):
        load_config(file, env={})


def test_wrong_type_in_file(tmp_path: Path) -> None:
    """A wrong TOML type is reported with the field name."""
    file = tmp_path / "agent.toml"
    file.write_text('name = "alpha"\nkafka = ["h:1"]\nmax_body_bytes = "big"\n')
    with pytest.raises(ConfigError, match=r"^invalid config: max_body_bytes: Expected `int`"):
        load_config(file, env={})


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    """Unparseable or missing config files are one-line errors naming the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


def test_node_address_defaults_to_http_host() -> None:
    """The node address is the HTTP host, or loopback when listening on all interfaces."""
    assert load_config(env={}, flags={**BASE, "http": "10.1.2.3:80"}).node_address == "10.1.2.3"
    assert load_config(env={}, flags={**BASE, "http": "0.0.0.0:80"}).node_address == "127.0.0.1"
