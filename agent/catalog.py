"""Pure catalog rules: TTL expiry, health filtering, exported-services config and views.

Nothing here awaits or touches a file, a socket or SQLite: callers pass in the instances, the
config entry and the clock (``now``) and get values back. The store applies the results in one
transaction; the HTTP layer only encodes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import msgspec

from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.names import InvalidName, validate_peer_name, validate_service_name

WILDCARD = "*"
EXPORTED_SERVICES_KIND = "exported-services"
# Consul has one exported-services entry per partition; outside Enterprise it is "default".
EXPORTED_SERVICES_NAME = "default"
TTL_EXPIRED_OUTPUT = "TTL expired"


class CatalogError(ValueError):
    """A user-supplied catalog value is invalid; the message is one clear line."""


# --- durations ---------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, field: str = "duration") -> float:
    """Parse a Go duration as Consul accepts it ("10s", "1m30s", "500ms"); a bare number is s."""
    value = text.strip()
    if not value:
        raise CatalogError(f"{field}: empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0 or seconds != seconds:
            raise CatalogError(f"{field}: duration must not be negative, got {text!r}")
        return seconds
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise CatalogError(f"{field}: invalid duration {text!r} (use e.g. 10s, 1m30s, 500ms)")
    return total


# --- health --------------------------------------------------------------------------------


class TtlState(msgspec.Struct, frozen=True):
    """What expiry needs to know about one check: its id, status and deadline."""

    CheckID: str
    Status: CheckStatus
    ExpiresAt: float | None


def ttl_deadline(check: HealthCheck, now: float) -> float | None:
    """When a check refreshed at ``now`` expires; None for checks without a TTL."""
    return now + check.TTLSeconds if check.TTLSeconds > 0 else None


def expired_checks(checks: Iterable[TtlState], now: float) -> list[str]:
    """Ids of TTL checks whose deadline passed and that are not critical yet."""
    return sorted(
        c.CheckID
        for c in checks
        if c.ExpiresAt is not None and c.ExpiresAt <= now and c.Status != CheckStatus.CRITICAL
    )


def expire(check: HealthCheck) -> HealthCheck:
    """The check as it looks after its TTL ran out (Consul's wording)."""
    return msgspec.structs.replace(check, Status=CheckStatus.CRITICAL, Output=TTL_EXPIRED_OUTPUT)


def carry_check_state(old: ServiceInstance | None, new: ServiceInstance) -> ServiceInstance:
    """Re-registering keeps the status and output of checks that already existed.

    Without this, reloading the services file or re-running a deploy script would flip every
    healthy TTL check back to critical until its next heartbeat.
    """
    if old is None:
        return new
    previous = {c.CheckID: c for c in old.Checks}
    checks = tuple(
        msgspec.structs.replace(
            c, Status=previous[c.CheckID].Status, Output=previous[c.CheckID].Output
        )
        if c.CheckID in previous
        else c
        for c in new.Checks
    )
    return msgspec.structs.replace(new, Checks=checks)


def filter_health(
    instances: Iterable[ServiceInstance], *, passing: bool = False, tag: str | None = None
) -> list[ServiceInstance]:
    """Consul's ``?passing`` (every check passing) and ``?tag=`` filters, ordered by ID."""
    out = [
        inst
        for inst in instances
        if (not passing or inst.status == CheckStatus.PASSING) and (tag is None or tag in inst.Tags)
    ]
    return sorted(out, key=lambda inst: inst.ID)


def service_tags(instances: Iterable[ServiceInstance]) -> dict[str, list[str]]:
    """``/v1/catalog/services``: service name -> sorted union of its instances' tags."""
    tags: dict[str, set[str]] = {}
    for inst in instances:
        tags.setdefault(inst.Name, set()).update(inst.Tags)
    return {name: sorted(tags[name]) for name in sorted(tags)}


# --- exported-services config entry -----------------------------------------------------


class ServiceConsumer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One consumer of an exported service: a peer name (need not exist yet, as in Consul)."""

    Peer: str


class ExportedService(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A service name (or ``*``) and the peers it goes to."""

    Name: str
    Consumers: tuple[ServiceConsumer, ...] = ()


class ExportedServicesEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Consul's ``exported-services`` config entry."""

    Kind: str
    Name: str = EXPORTED_SERVICES_NAME
    Services: tuple[ExportedService, ...] = ()
    Meta: dict[str, str] = msgspec.field(default_factory=dict)
    # Set by the store on read, ignored on write (as Consul does).
    CreateIndex: int = 0
    ModifyIndex: int = 0


def validate_exported(entry: ExportedServicesEntry) -> ExportedServicesEntry:
    """Check names and duplicates; return the entry with index fields cleared."""
    if entry.Kind != EXPORTED_SERVICES_KIND:
        raise CatalogError(f"Kind: expected {EXPORTED_SERVICES_KIND!r}, got {entry.Kind!r}")
    if entry.Name != EXPORTED_SERVICES_NAME:
        raise CatalogError(
            f"Name: exported-services entry must be named 'default', got {entry.Name!r}"
        )
    seen: set[str] = set()
    for i, service in enumerate(entry.Services):
        if service.Name != WILDCARD:
            try:
                validate_service_name(service.Name)
            except InvalidName as exc:
                raise CatalogError(f"Services[{i}].Name: {exc}") from None
        if service.Name in seen:
            raise CatalogError(f"Services[{i}].Name: service {service.Name!r} is listed twice")
        seen.add(service.Name)
        peers: set[str] = set()
        for j, consumer in enumerate(service.Consumers):
            try:
                validate_peer_name(consumer.Peer)
            except InvalidName as exc:
                raise CatalogError(f"Services[{i}].Consumers[{j}].Peer: {exc}") from None
            if consumer.Peer in peers:
                raise CatalogError(
                    f"Services[{i}].Consumers[{j}].Peer: peer {consumer.Peer!r} is listed twice"
                )
            peers.add(consumer.Peer)
    return msgspec.structs.replace(entry, CreateIndex=0, ModifyIndex=0)


def empty_exported() -> ExportedServicesEntry:
    return ExportedServicesEntry(Kind=EXPORTED_SERVICES_KIND)


def add_export(entry: ExportedServicesEntry, service: str, peer: str) -> ExportedServicesEntry:
    """The entry with ``peer`` added as a consumer of ``service`` (idempotent)."""
    services = list(entry.Services)
    for i, svc in enumerate(services):
        if svc.Name == service:
            if any(c.Peer == peer for c in svc.Consumers):
                return entry
            services[i] = ExportedService(svc.Name, (*svc.Consumers, ServiceConsumer(peer)))
            break
    else:
        services.append(ExportedService(service, (ServiceConsumer(peer),)))
    return msgspec.structs.replace(entry, Services=tuple(services))


def remove_export(entry: ExportedServicesEntry, service: str, peer: str) -> ExportedServicesEntry:
    """The entry without ``peer`` as a consumer of ``service``; empty services are dropped."""
    services: list[ExportedService] = []
    for svc in entry.Services:
        if svc.Name == service:
            consumers = tuple(c for c in svc.Consumers if c.Peer != peer)
            if consumers:
                services.append(ExportedService(svc.Name, consumers))
        else:
            services.append(svc)
    return msgspec.structs.replace(entry, Services=tuple(services))


def peers_for(service: str, entry: ExportedServicesEntry | None) -> list[str]:
    """Peers that should see ``service``: explicit consumers plus the ``*`` entry's."""
    if entry is None:
        return []
    peers: set[str] = set()
    for svc in entry.Services:
        if svc.Name in (service, WILDCARD):
            peers.update(c.Peer for c in svc.Consumers)
    return sorted(peers)


ExportedView = dict[str, dict[str, ServiceInstance]]


def instance_key(instance: ServiceInstance) -> str:
    """The key of an instance in views, feeds and (later) Kafka records: its unique ID."""
    return instance.ID


def exported_view(
    instances: Iterable[ServiceInstance], entry: ExportedServicesEntry | None
) -> ExportedView:
    """What each consumer peer should see: {peer: {instance_key: instance}}."""
    view: ExportedView = {}
    for inst in instances:
        for peer in peers_for(inst.Name, entry):
            view.setdefault(peer, {})[instance_key(inst)] = inst
    return view


class ExportedChange(msgspec.Struct, frozen=True):
    """One change of what ``Peer`` should see; ``Instance`` None means removed."""

    Peer: str
    Key: str
    Instance: ServiceInstance | None


def diff_views(
    old: Mapping[str, Mapping[str, ServiceInstance]],
    new: Mapping[str, Mapping[str, ServiceInstance]],
) -> list[ExportedChange]:
    """Changes that turn ``old`` into ``new``, ordered by (peer, key) for determinism."""
    changes: list[ExportedChange] = []
    for peer in sorted(set(old) | set(new)):
        before = old.get(peer, {})
        after = new.get(peer, {})
        for key in sorted(set(before) | set(after)):
            if key not in after:
                changes.append(ExportedChange(peer, key, None))
            elif before.get(key) != after[key]:
                changes.append(ExportedChange(peer, key, after[key]))
    return changes


class ResolvedConsumers(msgspec.Struct, frozen=True):
    Peers: tuple[str, ...]


class ResolvedExport(msgspec.Struct, frozen=True):
    """One row of ``GET /v1/exported-services`` (Consul's shape)."""

    Service: str
    Consumers: ResolvedConsumers


def resolved_exports(
    instances: Iterable[ServiceInstance], entry: ExportedServicesEntry | None
) -> list[ResolvedExport]:
    """Which registered service goes to which peers, wildcards resolved, sorted by name."""
    names = sorted({inst.Name for inst in instances})
    out = []
    for name in names:
        peers = peers_for(name, entry)
        if peers:
            out.append(ResolvedExport(name, ResolvedConsumers(tuple(peers))))
    return out
