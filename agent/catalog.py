"""Pure catalog rules: TTL expiry, health filtering, exported-services config and views.

Nothing here awaits or touches a file, a socket or SQLite: callers pass in the instances, the
config entry and the clock (``now``) and get values back. The store applies the results in one
transaction; the HTTP layer only encodes them.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping

import msgspec

from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.names import (
    InvalidName,
    validate_check_id,
    validate_instance_id,
    validate_peer_name,
    validate_service_name,
)

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


# --- registrations (agent API body and services file) -----------------------------------

# Check types we cannot run: the agent core only has TTL checks (and manual ones, without TTL).
_UNSUPPORTED_CHECK_FIELDS = ("HTTP", "TCP", "Args", "GRPC", "DockerContainerID", "UDP", "H2PING")
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_META_PAIRS = 64
MAX_TAGS = 64


class CheckDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A check in a registration. Unknown fields (Interval, Timeout, ...) are ignored."""

    CheckID: str | None = None
    ID: str | None = None
    Name: str = ""
    TTL: str | None = None
    Status: CheckStatus | None = None
    Notes: str = ""
    HTTP: str | None = None
    TCP: str | None = None
    Args: list[str] | None = None
    GRPC: str | None = None
    DockerContainerID: str | None = None
    UDP: str | None = None
    H2PING: str | None = None


class ServiceRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Body of ``PUT /v1/agent/service/register`` (Consul's field names)."""

    Name: str
    ID: str | None = None
    Address: str = ""
    Port: int = 0
    Tags: list[str] | None = None
    Meta: dict[str, str] | None = None
    Check: CheckDefinition | None = None
    Checks: list[CheckDefinition] | None = None


def _fold(key: str) -> str:
    return key.lower().replace("_", "")


_REG_KEYS = {_fold(f): f for f in ServiceRegistration.__struct_fields__}
_CHECK_KEYS = {_fold(f): f for f in CheckDefinition.__struct_fields__}


def _canonical(obj: object, keys: Mapping[str, str]) -> object:
    if not isinstance(obj, dict):
        return obj
    return {keys.get(_fold(k), k) if isinstance(k, str) else k: v for k, v in obj.items()}


def canonical_registration(obj: object) -> object:
    """Consul decodes registrations case-insensitively (py-consul sends ``name``, ``checks``,
    ``ttl``); map keys to our field names. Meta keys are user data and stay untouched."""
    top = _canonical(obj, _REG_KEYS)
    if not isinstance(top, dict):
        return top
    if "Check" in top:
        top["Check"] = _canonical(top["Check"], _CHECK_KEYS)
    if isinstance(top.get("Checks"), list):
        top["Checks"] = [_canonical(c, _CHECK_KEYS) for c in top["Checks"]]
    return top


def _check_from(
    definition: CheckDefinition, default_id: str, service_id: str, name: str
) -> HealthCheck:
    for field in _UNSUPPORTED_CHECK_FIELDS:
        if getattr(definition, field) is not None:
            raise CatalogError(f"check {field}: only TTL checks are supported by this agent")
    check_id = definition.CheckID or definition.ID or default_id
    try:
        validate_check_id(check_id)
    except InvalidName as exc:
        raise CatalogError(str(exc)) from None
    ttl = parse_duration(definition.TTL, "check TTL") if definition.TTL is not None else 0.0
    if definition.TTL is not None and ttl <= 0:
        raise CatalogError("check TTL: must be greater than 0")
    return HealthCheck(
        CheckID=check_id,
        Name=definition.Name or f"Service '{name}' check",
        # Consul starts TTL checks critical until the first heartbeat.
        Status=definition.Status or CheckStatus.CRITICAL,
        Notes=definition.Notes,
        ServiceID=service_id,
        ServiceName=name,
        TTLSeconds=ttl,
    )


def registration_to_instance(reg: ServiceRegistration) -> ServiceInstance:
    """Validate a registration and build the instance, with Consul's default check ids."""
    try:
        name = validate_service_name(reg.Name)
        service_id = validate_instance_id(reg.ID or reg.Name)
    except InvalidName as exc:
        raise CatalogError(str(exc)) from None
    if not 0 <= reg.Port <= 65535:
        raise CatalogError(f"Port: {reg.Port} is out of range 0-65535")
    if len(reg.Address) > 255 or any(ch.isspace() for ch in reg.Address):
        raise CatalogError(f"Address: invalid address {reg.Address!r}")
    tags = tuple(reg.Tags or ())
    if len(tags) > MAX_TAGS or any(not t or len(t) > 255 for t in tags):
        raise CatalogError(f"Tags: at most {MAX_TAGS} non-empty tags of up to 255 characters")
    meta = dict(reg.Meta or {})
    if len(meta) > MAX_META_PAIRS:
        raise CatalogError(f"Meta: at most {MAX_META_PAIRS} pairs")
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(key) or len(value) > 512:
            raise CatalogError(
                f"Meta: invalid key {key!r} (letters, digits, '_' and '-', up to 128) "
                "or value longer than 512"
            )
    definitions = ([reg.Check] if reg.Check else []) + list(reg.Checks or [])
    checks: list[HealthCheck] = []
    for n, definition in enumerate(definitions, start=1):
        default_id = (
            f"service:{service_id}" if len(definitions) == 1 else f"service:{service_id}:{n}"
        )
        checks.append(_check_from(definition, default_id, service_id, name))
    ids = [c.CheckID for c in checks]
    if len(set(ids)) != len(ids):
        raise CatalogError("Checks: check ids must be unique")
    return ServiceInstance(
        ID=service_id,
        Name=name,
        Address=reg.Address,
        Port=reg.Port,
        Tags=tags,
        Meta=meta,
        Checks=tuple(checks),
    )


def decode_registration(obj: object) -> ServiceInstance:
    """A decoded JSON/TOML value -> a validated instance, or CatalogError with one line."""
    try:
        reg = msgspec.convert(canonical_registration(obj), ServiceRegistration)
    except msgspec.ValidationError as exc:
        raise CatalogError(str(exc)) from None
    return registration_to_instance(reg)


def decode_services_file(data: bytes, suffix: str) -> list[ServiceInstance]:
    """Parse a services file (TOML or JSON): ``services = [{Name = ..., ...}, ...]``.

    JSON may also be a bare list. Any problem raises CatalogError naming the entry.
    """
    try:
        if suffix == ".toml":
            doc: object = tomllib.loads(data.decode("utf-8"))
        elif suffix == ".json":
            doc = json.loads(data)
        else:
            raise CatalogError(f"services file must end in .toml or .json, not {suffix!r}")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot parse services file: {exc}") from None
    if isinstance(doc, dict):
        services = doc.get("services", doc.get("Services", []))
        extra = set(doc) - {"services", "Services"}
        if extra:
            raise CatalogError(f"unknown top-level key {sorted(extra)[0]!r} (expected 'services')")
    else:
        services = doc
    if not isinstance(services, list):
        raise CatalogError("'services' must be a list of service registrations")
    out: list[ServiceInstance] = []
    seen: set[str] = set()
    for i, entry in enumerate(services):
        try:
            inst = decode_registration(entry)
        except CatalogError as exc:
            raise CatalogError(f"services[{i}]: {exc}") from None
        if inst.ID in seen:
            raise CatalogError(f"services[{i}]: service id {inst.ID!r} is listed twice")
        seen.add(inst.ID)
        out.append(inst)
    return out
