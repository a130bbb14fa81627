"""Validation of the names that end up in Kafka topic names, record keys and URLs.

Cluster and peer names become parts of Kafka topic names (legal characters there are
``[a-zA-Z0-9._-]``, at most 249 in total), so they are held to lowercase DNS labels, as
Consul does for peer names. Service names, instance ids and check ids become record keys and
URL path segments: ``/``, whitespace, control characters and ``*`` (our wildcard) would break
them, so they are refused at the edge with a message naming the offending value.
"""

from __future__ import annotations

import re


class InvalidName(ValueError):
    """A user supplied a name we cannot carry; the message says which and why."""


# Lowercase DNS label: letters, digits and inner hyphens, 1..63 characters.
_CLUSTER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Consul service names are DNS-friendly; we also accept '_' and '.', which Kafka allows.
_SERVICE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9_])?$")
# Ids may also hold ':' because Consul's default check id is ``service:{id}``.
_ID_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._:-]{0,190}[A-Za-z0-9_])?$")


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidName(f"{kind} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidName(f"{kind} must not be empty")
    if not pattern.fullmatch(value):
        raise InvalidName(f"invalid {kind} {value!r}: {rule}")
    return value


def validate_cluster_name(value: object, kind: str = "cluster name") -> str:
    """Return ``value`` if it is a valid cluster name, else raise InvalidName."""
    return _check(
        kind,
        value,
        _CLUSTER_RE,
        "use 1-63 lowercase letters, digits and inner '-' (it becomes part of Kafka topic names)",
    )


def validate_peer_name(value: object) -> str:
    """Peer names are the remote cluster's local alias: same rules as cluster names."""
    return validate_cluster_name(value, kind="peer name")


def validate_service_name(value: object) -> str:
    """Return ``value`` if it is a valid service name, else raise InvalidName."""
    return _check(
        "service name",
        value,
        _SERVICE_RE,
        "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def validate_instance_id(value: object) -> str:
    """Return ``value`` if it is a valid service instance id, else raise InvalidName."""
    return _check(
        "service id",
        value,
        _ID_RE,
        "use 1-192 letters, digits, '.', '_', ':' or '-' (no '/', spaces or '*')",
    )


def validate_check_id(value: object) -> str:
    """Return ``value`` if it is a valid check id, else raise InvalidName."""
    return _check(
        "check id",
        value,
        _ID_RE,
        "use 1-192 letters, digits, '.', '_', ':' or '-' (no '/', spaces or '*')",
    )
