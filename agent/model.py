"""Catalog values shared by every part of the agent.

These frozen msgspec Structs are the single source of truth for what a service instance is,
locally and on the wire. Field names follow Consul's JSON (``ID``, ``Name``, ...) so that the
HTTP API can encode them unchanged. Evolution rules: new fields get defaults, a field never
changes type, nothing is renamed.
"""

from __future__ import annotations

import enum

import msgspec


class CheckStatus(enum.StrEnum):
    """Consul's health states, worst last."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


# Worse states sort higher; an instance's health is the worst of its checks.
_SEVERITY = {CheckStatus.PASSING: 0, CheckStatus.WARNING: 1, CheckStatus.CRITICAL: 2}


def worst(statuses: list[CheckStatus] | tuple[CheckStatus, ...]) -> CheckStatus:
    """Aggregate health: the worst status, passing when there are no checks (as in Consul)."""
    result = CheckStatus.PASSING
    for status in statuses:
        if _SEVERITY[status] > _SEVERITY[result]:
            result = status
    return result


# gc=False on both value types: made of strings, numbers and tuples of them, they can't form
# a reference cycle, and 100k imported instances made every full collection walk them.
class HealthCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    """One health check of a service instance, as Consul's /v1/health/service shows it."""

    CheckID: str
    Name: str
    Status: CheckStatus = CheckStatus.CRITICAL
    Notes: str = ""
    Output: str = ""
    ServiceID: str = ""
    ServiceName: str = ""
    # TTL checks: seconds; 0 means the check has no TTL (it only changes through the API).
    TTLSeconds: float = 0.0


class ServiceInstance(msgspec.Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    """A registered service instance with its checks."""

    ID: str
    Name: str
    Address: str = ""
    Port: int = 0
    Tags: tuple[str, ...] = ()
    Meta: dict[str, str] = msgspec.field(default_factory=dict)
    Checks: tuple[HealthCheck, ...] = ()

    @property
    def status(self) -> CheckStatus:
        return worst(tuple(check.Status for check in self.Checks))
