"""Pure catalog rules: durations, TTL expiry, health filters, exported-services and views."""

from __future__ import annotations

import gc

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import catalog
from agent.catalog import (
    CatalogError,
    ExportedService,
    ExportedServicesEntry,
    ServiceConsumer,
    TtlState,
)
from agent.model import CheckStatus, HealthCheck, ServiceInstance


def inst(
    id_: str, name: str, status: CheckStatus | None = None, tags: tuple[str, ...] = ()
) -> ServiceInstance:
    checks = () if status is None else (HealthCheck(f"service:{id_}", "c", status),)
    return ServiceInstance(ID=id_, Name=name, Tags=tags, Checks=checks)


def entry(*services: tuple[str, list[str]]) -> ExportedServicesEntry:
    return ExportedServicesEntry(
        Kind="exported-services",
        Services=tuple(
            ExportedService(name, tuple(ServiceConsumer(p) for p in peers))
            for name, peers in services
        ),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("2", 2.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Go-style durations as Consul accepts them, bare numbers as seconds."""
    assert catalog.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1", "s10", "10s junk"])
def test_parse_duration_rejects(text: str) -> None:
    """Malformed or negative durations are a CatalogError naming the field."""
    with pytest.raises(CatalogError, match="wait"):
        catalog.parse_duration(text, "wait")


def test_expired_checks_uses_injected_now() -> None:
    """Only TTL checks past their deadline and not already critical expire."""
    states = [
        TtlState("a", CheckStatus.PASSING, 10.0),
        TtlState("b", CheckStatus.PASSING, 20.0),
        TtlState("c", CheckStatus.CRITICAL, 5.0),
        TtlState("d", CheckStatus.WARNING, None),
        TtlState("e", CheckStatus.WARNING, 10.0),
    ]
    assert catalog.expired_checks(states, now=10.0) == ["a", "e"]
    assert catalog.expired_checks(states, now=9.9) == []


def test_expire_and_deadline() -> None:
    """An expired check is critical with Consul's output; checks without TTL never expire."""
    check = HealthCheck("x", "x", CheckStatus.PASSING, TTLSeconds=3.0)
    assert catalog.ttl_deadline(check, 100.0) == 103.0
    assert catalog.ttl_deadline(HealthCheck("y", "y"), 100.0) is None
    expired = catalog.expire(check)
    assert expired.Status is CheckStatus.CRITICAL
    assert expired.Output == "TTL expired"


def test_filter_health_passing_and_tag() -> None:
    """?passing keeps instances whose checks all pass (warning excluded); ?tag filters tags."""
    instances = [
        inst("b", "web", CheckStatus.PASSING, ("v1",)),
        inst("a", "web", CheckStatus.WARNING, ("v1",)),
        inst("c", "web", None, ("v2",)),
        inst("d", "web", CheckStatus.CRITICAL),
    ]
    assert [i.ID for i in catalog.filter_health(instances)] == ["a", "b", "c", "d"]
    assert [i.ID for i in catalog.filter_health(instances, passing=True)] == ["b", "c"]
    assert [i.ID for i in catalog.filter_health(instances, tag="v1")] == ["a", "b"]


def test_service_tags_union() -> None:
    """catalog/services maps each service to the sorted union of its tags."""
    tags = catalog.service_tags(
        [inst("1", "web", tags=("b", "a")), inst("2", "web", tags=("c",)), inst("3", "db")]
    )
    assert tags == {"db": [], "web": ["a", "b", "c"]}


def test_carry_check_state_on_reregister() -> None:
    """Re-registering keeps the status of existing checks; new checks start as given."""
    old = inst("1", "web", CheckStatus.PASSING)
    new = ServiceInstance(
        "1", "web", Checks=(HealthCheck("service:1", "c"), HealthCheck("other", "o"))
    )
    merged = catalog.carry_check_state(old, new)
    assert [c.Status for c in merged.Checks] == [CheckStatus.PASSING, CheckStatus.CRITICAL]


def test_validate_exported_accepts_wildcard_and_unknown_peers() -> None:
    """'*' is a valid service name and peers need not exist yet."""
    e = entry(("*", ["beta"]), ("web", ["gamma", "delta"]))
    assert catalog.validate_exported(e) == e


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ExportedServicesEntry(Kind="service-defaults"), "Kind"),
        (ExportedServicesEntry(Kind="exported-services", Name="other"), "Name"),
        (entry(("web", ["Beta"])), r"Services\[0\].Consumers\[0\].Peer"),
        (entry(("we b", ["beta"])), r"Services\[0\].Name"),
        (entry(("web", ["beta"]), ("web", ["gamma"])), "listed twice"),
        (entry(("web", ["beta", "beta"])), "listed twice"),
    ],
)
def test_validate_exported_rejects(bad: ExportedServicesEntry, message: str) -> None:
    """Bad kinds, names, peers and duplicates are refused with a message naming the spot."""
    with pytest.raises(CatalogError, match=message):
        catalog.validate_exported(bad)


def test_exported_view_wildcard_and_two_peers() -> None:
    """A service exported to two peers appears in both views; '*' adds every service."""
    instances = [inst("web-1", "web"), inst("web-2", "web"), inst("db-1", "db")]
    view = catalog.exported_view(instances, entry(("web", ["beta", "gamma"]), ("*", ["delta"])))
    assert set(view) == {"beta", "gamma", "delta"}
    assert set(view["beta"]) == {"web-1", "web-2"}
    assert set(view["gamma"]) == {"web-1", "web-2"}
    assert set(view["delta"]) == {"web-1", "web-2", "db-1"}


def test_exported_view_without_entry_is_empty() -> None:
    """No config entry: nothing is exported."""
    assert catalog.exported_view([inst("1", "web")], None) == {}


def test_diff_views_add_change_remove() -> None:
    """Diff lists additions, changed instances and removals (Instance None), ordered."""
    a, b = inst("1", "web"), inst("2", "web")
    a2 = inst("1", "web", CheckStatus.PASSING)
    old = {"beta": {"1": a, "2": b}, "gamma": {"1": a}}
    new = {"beta": {"1": a2}, "delta": {"2": b}}
    changes = catalog.diff_views(old, new)
    assert [(c.Peer, c.Key, c.Instance) for c in changes] == [
        ("beta", "1", a2),
        ("beta", "2", None),
        ("delta", "2", b),
        ("gamma", "1", None),
    ]


def test_unexporting_produces_removals() -> None:
    """Removing a consumer from the entry yields removals for exactly that peer."""
    instances = [inst("web-1", "web")]
    before = catalog.exported_view(instances, entry(("web", ["beta", "gamma"])))
    e = catalog.remove_export(entry(("web", ["beta", "gamma"])), "web", "beta")
    after = catalog.exported_view(instances, e)
    changes = catalog.diff_views(before, after)
    assert [(c.Peer, c.Key, c.Instance) for c in changes] == [("beta", "web-1", None)]


def test_add_and_remove_export_are_idempotent() -> None:
    """add_export twice equals once; removing the last consumer drops the service."""
    e = catalog.add_export(catalog.empty_exported(), "web", "beta")
    assert catalog.add_export(e, "web", "beta") == e
    e2 = catalog.add_export(e, "web", "gamma")
    assert [c.Peer for c in e2.Services[0].Consumers] == ["beta", "gamma"]
    assert (
        catalog.remove_export(catalog.remove_export(e2, "web", "beta"), "web", "gamma").Services
        == ()
    )


def test_resolved_exports() -> None:
    """The resolved list names each registered service and its peers; unexported ones are absent."""
    instances = [inst("1", "web"), inst("2", "db"), inst("3", "cache")]
    rows = catalog.resolved_exports(instances, entry(("*", ["beta"]), ("web", ["gamma"])))
    assert [(r.Service, r.Consumers.Peers) for r in rows] == [
        ("cache", ("beta",)),
        ("db", ("beta",)),
        ("web", ("beta", "gamma")),
    ]


def test_decode_registration_lowercase_keys_and_default_check_id() -> None:
    """Keys are case-insensitive (py-consul sends lowercase); one check gets 'service:{id}'."""
    got = catalog.decode_registration(
        {
            "name": "web",
            "id": "web-1",
            "port": 80,
            "tags": ["a"],
            "meta": {"Ver": "1"},
            "check": {"ttl": "10s"},
        }
    )
    assert got.ID == "web-1"
    assert got.Meta == {"Ver": "1"}
    assert got.Checks[0].CheckID == "service:web-1"
    assert got.Checks[0].TTLSeconds == 10.0
    assert got.Checks[0].Status is CheckStatus.CRITICAL


def test_decode_registration_multiple_checks_numbered() -> None:
    """Several checks get 'service:{id}:{n}' unless they name their own CheckID."""
    got = catalog.decode_registration(
        {
            "Name": "web",
            "Checks": [{"TTL": "5s"}, {"CheckID": "mine", "TTL": "5s", "Status": "passing"}],
        }
    )
    assert [c.CheckID for c in got.Checks] == ["service:web:1", "mine"]
    assert got.Checks[1].Status is CheckStatus.PASSING


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "missing required field `Name`"),
        ({"Name": 5}, "Expected `str`"),
        ({"Name": "web", "Port": "80"}, "Expected `int`"),
        ({"Name": "web", "Port": 70000}, "Port"),
        ({"Name": "a/b"}, "service name"),
        ({"Name": "web", "ID": "x y"}, "service id"),
        ({"Name": "web", "Check": {"HTTP": "http://x"}}, "only TTL checks"),
        ({"Name": "web", "Check": {"TTL": "soon"}}, "check TTL"),
        ({"Name": "web", "Check": {"TTL": "0s"}}, "greater than 0"),
        ({"Name": "web", "Checks": [{"CheckID": "x"}, {"CheckID": "x"}]}, "unique"),
        ({"Name": "web", "Meta": {"bad key": "v"}}, "Meta"),
        ({"Name": "web", "Tags": [""]}, "Tags"),
        ({"Name": "web", "Address": "a b"}, "Address"),
        ([1, 2], "Expected `object`"),
    ],
)
def test_decode_registration_rejects(body: object, message: str) -> None:
    """Wrong types, bad names and unsupported checks are one-line CatalogErrors."""
    with pytest.raises(CatalogError, match=message):
        catalog.decode_registration(body)


def test_services_file_toml_and_json() -> None:
    """Services files in TOML and JSON decode to the same instances."""
    toml = b'[[services]]\nName = "web"\nID = "web-1"\nPort = 80\n'
    json_ = b'{"services": [{"Name": "web", "ID": "web-1", "Port": 80}]}'
    assert catalog.decode_services_file(toml, ".toml") == catalog.decode_services_file(
        json_, ".json"
    )
    assert catalog.decode_services_file(b'[{"Name": "db"}]', ".json")[0].ID == "db"


@pytest.mark.parametrize(
    ("data", "suffix", "message"),
    [
        (b"[[services]\n", ".toml", "cannot parse"),
        (b"{", ".json", "cannot parse"),
        (b"{}", ".yaml", "must end in"),
        (b'{"servics": []}', ".json", "unknown top-level key"),
        (b'{"services": {}}', ".json", "must be a list"),
        (b'[{"Name": "a"}, {"Name": "a"}]', ".json", r"services\[1\].*listed twice"),
        (b'[{"Name": "a b"}]', ".json", r"services\[0\]"),
    ],
)
def test_services_file_errors(data: bytes, suffix: str, message: str) -> None:
    """A bad services file is a CatalogError naming the entry."""
    with pytest.raises(CatalogError, match=message):
        catalog.decode_services_file(data, suffix)


_ids = st.sampled_from(["1", "2", "3", "4"])
_peers = st.sampled_from(["beta", "gamma"])
_views = st.dictionaries(
    _peers,
    st.dictionaries(_ids, st.builds(inst, _ids, st.sampled_from(["web", "db"]))),
)


@given(_views, _views)
def test_diff_views_replays_to_new(
    old: dict[str, dict[str, ServiceInstance]], new: dict[str, dict[str, ServiceInstance]]
) -> None:
    """Applying diff(old, new) to old yields new, minus empty peers (property)."""
    state = {peer: dict(v) for peer, v in old.items()}
    for change in catalog.diff_views(old, new):
        if change.Instance is None:
            del state[change.Peer][change.Key]
        else:
            state.setdefault(change.Peer, {})[change.Key] = change.Instance
    assert {p: v for p, v in state.items() if v} == {p: v for p, v in new.items() if v}


def test_entry_json_roundtrip_consul_shape() -> None:
    """The entry encodes with Consul's field names."""
    e = entry(("web", ["beta"]))
    doc = msgspec.json.decode(msgspec.json.encode(e))
    assert doc["Services"] == [{"Name": "web", "Consumers": [{"Peer": "beta"}]}]
    assert doc["Kind"] == "exported-services"


def test_instances_and_checks_stay_out_of_the_garbage_collector() -> None:
    """Value types of strings, numbers and tuples can't form a reference cycle, so they are
    not GC-tracked (gc=False): 100k imported instances made every full collection walk them."""
    check = HealthCheck(CheckID="service:web-1", Name="ttl")
    instance = ServiceInstance(ID="web-1", Name="web", Meta={"team": "a"}, Checks=(check,))
    assert not gc.is_tracked(instance)
    assert not gc.is_tracked(check)
