"""Name validation: what may become part of a topic name, record key or URL."""

from __future__ import annotations

import pytest

from agent.names import (
    InvalidName,
    validate_check_id,
    validate_cluster_name,
    validate_instance_id,
    validate_peer_name,
    validate_service_name,
)


@pytest.mark.parametrize("name", ["a", "dc1", "east-1", "x" * 63])
def test_valid_cluster_names(name: str) -> None:
    """Lowercase DNS labels are accepted as cluster and peer names."""
    assert validate_cluster_name(name) == name
    assert validate_peer_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "-a", "a-", "a.b", "a_b", "a b", "a/b", "x" * 64, "é", "a*"]
)
def test_invalid_cluster_names(name: str) -> None:
    """Anything that is not a lowercase DNS label is refused with the value in the message."""
    with pytest.raises(InvalidName, match="cluster name"):
        validate_cluster_name(name)


def test_peer_name_message_says_peer() -> None:
    """The error for a bad peer name says it is about a peer name."""
    with pytest.raises(InvalidName, match="invalid peer name 'Bad'"):
        validate_peer_name("Bad")


def test_non_string_is_refused() -> None:
    """A non-string (e.g. a number from JSON) gets a type message, not a crash."""
    with pytest.raises(InvalidName, match="must be a string, got int"):
        validate_service_name(5)


@pytest.mark.parametrize("name", ["web", "Web_API", "api.v2", "a", "db-1"])
def test_valid_service_names(name: str) -> None:
    """Consul-style service names with '.', '_' and '-' are accepted."""
    assert validate_service_name(name) == name


@pytest.mark.parametrize("name", ["", "-web", "web.", "a/b", "a b", "*", "a\nb", "x" * 129])
def test_invalid_service_names(name: str) -> None:
    """Slashes, spaces, wildcards, control chars and overlong names are refused."""
    with pytest.raises(InvalidName):
        validate_service_name(name)


@pytest.mark.parametrize("value", ["web-1", "service:web-1", "service:web-1:2", "_x"])
def test_valid_ids(value: str) -> None:
    """Instance and check ids may contain ':' (Consul's default check id uses it)."""
    assert validate_instance_id(value) == value
    assert validate_check_id(value) == value


@pytest.mark.parametrize("value", ["", "a/b", "a b", "a*", ":a", "a\x00"])
def test_invalid_ids(value: str) -> None:
    """Ids that would break URL paths or record keys are refused."""
    with pytest.raises(InvalidName):
        validate_instance_id(value)
    with pytest.raises(InvalidName):
        validate_check_id(value)
