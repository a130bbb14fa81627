"""Convergence checker: the exporter's exported view for one peer against the importer's
imported catalog, compared through the public HTTP API only."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from tests.agent_fixtures import AgentProcess

# What one instance looks like for comparison: address, port, tags, meta, check statuses.
Instance = tuple[str, int, tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]]


def comparable(entry: dict[str, Any]) -> Instance:
    """One ``/v1/health/service`` entry as the values compared: address, port, tags, meta
    and the sorted statuses of its service checks."""
    svc = entry["Service"]
    return (
        svc["Address"],
        svc["Port"],
        tuple(svc["Tags"] or ()),
        tuple(sorted((svc["Meta"] or {}).items())),
        tuple(sorted(c["Status"] for c in entry["Checks"] if c.get("ServiceID"))),
    )


def _get(agent: AgentProcess, path: str, **params: str) -> Any:
    response = httpx.get(f"{agent.url}{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def _instances(
    agent: AgentProcess, service: str, peer: str | None, duplicates: list[str]
) -> dict[str, Instance]:
    entries = _get(agent, f"/v1/health/service/{service}", **({"peer": peer} if peer else {}))
    out: dict[str, Instance] = {}
    seen: Counter[str] = Counter()
    for entry in entries:
        seen[entry["Service"]["ID"]] += 1
        out[entry["Service"]["ID"]] = comparable(entry)
    where = f"imported from {peer}" if peer else "local"
    duplicates.extend(
        f"{service}/{sid} appears {n} times ({where})" for sid, n in seen.items() if n > 1
    )
    return out


def exported_services(exporter: AgentProcess, importer_peer: str) -> set[str]:
    """Services the exporter currently exports to ``importer_peer`` (wildcards resolved)."""
    rows = _get(exporter, "/v1/exported-services")
    return {row["Service"] for row in rows if importer_peer in row["Consumers"]["Peers"]}


def differences(
    exporter: AgentProcess,
    importer: AgentProcess,
    *,
    importer_peer: str | None = None,
    exporter_peer: str | None = None,
) -> list[str]:
    """Every difference between what ``exporter`` exports to the importer and what the
    importer serves as imported from the exporter; empty when converged.

    ``importer_peer`` is the exporter's name for the peering (default: the importer's cluster
    name), ``exporter_peer`` the importer's (default: the exporter's cluster name). Services
    without instances count as absent on both sides. An instance listed twice is a
    difference too.
    """
    to_peer = importer_peer or importer.name
    from_peer = exporter_peer or exporter.name
    found: list[str] = []
    exported = exported_services(exporter, to_peer)
    imported = set(_get(importer, "/v1/catalog/services", peer=from_peer))
    for service in sorted(exported | imported):
        want = _instances(exporter, service, None, found) if service in exported else {}
        have = _instances(importer, service, from_peer, found)
        for sid in sorted(want.keys() - have.keys()):
            found.append(f"{service}/{sid}: exported but missing on {importer.name}")
        for sid in sorted(have.keys() - want.keys()):
            reason = "not exported" if service not in exported else "deregistered"
            found.append(f"{service}/{sid}: imported on {importer.name} but {reason}")
        for sid in sorted(want.keys() & have.keys()):
            for field, w, h in zip(
                ("address", "port", "tags", "meta", "health"), want[sid], have[sid], strict=True
            ):
                if w != h:
                    found.append(f"{service}/{sid}: {field} {h!r} on importer, {w!r} exported")
    return found
