"""The SQLite store: catalog, checks, config, index, exported feed and imported catalog."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from agent import runtime
from agent.catalog import ExportedService, ExportedServicesEntry, ServiceConsumer
from agent.model import CheckStatus, HealthCheck, ServiceInstance
from agent.notifier import LOCAL, Change, IndexNotifier, Wake
from agent.store import Store, StoreError


def web(
    id_: str = "web-1", ttl: float = 10.0, name: str = "web", port: int = 80
) -> ServiceInstance:
    return ServiceInstance(
        ID=id_,
        Name=name,
        Port=port,
        Checks=(
            HealthCheck(f"service:{id_}", "ttl", TTLSeconds=ttl, ServiceID=id_, ServiceName=name),
        ),
    )


def export(*services: tuple[str, list[str]]) -> ExportedServicesEntry:
    return ExportedServicesEntry(
        Kind="exported-services",
        Services=tuple(
            ExportedService(n, tuple(ServiceConsumer(p) for p in peers)) for n, peers in services
        ),
    )


def test_register_read_deregister_moves_index(store: Store) -> None:
    """Writes move the index; reads return what was written; deregister of unknown is False."""
    start = store.index
    store.register(web())
    assert store.index == start + 1
    assert store.instances("web") == [web()]
    assert store.instance("web-1") == web()
    assert store.service_names() == {"web": []}
    assert store.deregister("web-1") is True
    assert store.deregister("web-1") is False
    assert store.instances() == []
    assert store.index == start + 2


def test_identical_register_does_not_move_index(store: Store) -> None:
    """Re-registering the same instance is not a change (no wake-up for blocking queries)."""
    store.register(web())
    index = store.index
    store.register(web())
    assert store.index == index


def test_create_and_modify_index(store: Store) -> None:
    """CreateIndex stays, ModifyIndex follows the last change of the instance."""
    store.register(web())
    first = store.list_local()[0]
    store.register(web(port=81))
    second = store.list_local()[0]
    assert second.CreateIndex == first.CreateIndex
    assert second.ModifyIndex > first.ModifyIndex
    assert second.Source == "api"


def test_update_check_and_unknown_check(store: Store) -> None:
    """pass/warn/fail change status and output; an unknown check id is reported as False."""
    store.register(web())
    assert store.update_check("service:web-1", CheckStatus.WARNING, "slow", now=0) is True
    check = store.instances()[0].Checks[0]
    assert (check.Status, check.Output) == (CheckStatus.WARNING, "slow")
    assert store.update_check("nope", CheckStatus.PASSING) is False


def test_ttl_expiry_with_injected_now(store: Store) -> None:
    """A TTL check goes critical once its deadline passes, once, and a pass re-arms it."""
    store.register(web(ttl=5.0), now=100.0)
    store.update_check("service:web-1", CheckStatus.PASSING, now=100.0)
    assert store.expire_ttl_checks(now=104.0) == []
    assert store.expire_ttl_checks(now=105.0) == ["service:web-1"]
    assert store.instances()[0].Checks[0].Output == "TTL expired"
    assert store.expire_ttl_checks(now=200.0) == []
    store.update_check("service:web-1", CheckStatus.PASSING, now=200.0)
    assert store.expire_ttl_checks(now=206.0) == ["service:web-1"]


def test_ttl_due_says_whether_the_expiry_has_work(store: Store) -> None:
    """The ticker's read before the expiry's write: due once a deadline passed, not after
    it fired, again once a pass re-armed it."""
    assert not store.ttl_due(now=100.0)  # no checks
    store.register(web(ttl=5.0), now=100.0)
    store.update_check("service:web-1", CheckStatus.PASSING, now=100.0)
    assert not store.ttl_due(now=104.0)
    assert store.ttl_due(now=105.0)
    assert store.expire_ttl_checks(now=105.0) == ["service:web-1"]
    assert not store.ttl_due(now=1000.0)
    store.update_check("service:web-1", CheckStatus.PASSING, now=200.0)
    assert store.ttl_due(now=205.0)


def test_the_ttl_ticker_writes_only_when_a_deadline_passed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ticks without a due check leave the writer lock alone; a due one is expired."""
    expiries: list[int] = []
    expired = threading.Event()
    expire = store.expire_ttl_checks

    def counted() -> list[str]:
        expiries.append(1)
        try:
            return expire()
        finally:
            expired.set()

    monkeypatch.setattr(store, "expire_ttl_checks", counted)
    store.register(web(ttl=30.0))
    store.update_check("service:web-1", CheckStatus.PASSING)

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(runtime._ttl_ticker, store, 0.01)
            await anyio.sleep(0.2)
            assert expiries == []
            store.update_check("service:web-1", CheckStatus.PASSING, now=0.0)  # long past
            assert await anyio.to_thread.run_sync(expired.wait, 5)
            group.cancel_scope.cancel()

    anyio.run(scenario)
    assert expiries == [1]
    assert store.instances()[0].Checks[0].Status == CheckStatus.CRITICAL


def test_reregister_keeps_check_status(store: Store) -> None:
    """Re-registration (e.g. services file reload) does not reset a passing check."""
    store.register(web())
    store.update_check("service:web-1", CheckStatus.PASSING)
    store.register(web(port=9000))
    assert store.instances()[0].Checks[0].Status is CheckStatus.PASSING


def test_check_id_conflict_refused(store: Store) -> None:
    """A check id owned by another service is refused and nothing is stored."""
    store.register(web())
    other = ServiceInstance("db-1", "db", Checks=(HealthCheck("service:web-1", "x"),))
    with pytest.raises(StoreError, match="already belongs"):
        store.register(other)
    assert store.instance("db-1") is None


def test_exported_feed_same_transaction(store: Store) -> None:
    """Config and catalog writes append ordered feed rows per peer, matching the view."""
    store.register(web("web-1"))
    assert store.last_exported_seq("beta") == 0
    store.set_exported_services(export(("web", ["beta", "gamma"])))
    store.register(web("web-2"))
    store.update_check("service:web-1", CheckStatus.PASSING, now=1.0)
    store.deregister("web-2")
    rows = store.exported_changes("beta")
    assert [(r.Key, r.Instance is None) for r in rows] == [
        ("web-1", False),
        ("web-2", False),
        ("web-1", False),
        ("web-2", True),
    ]
    assert [r.Seq for r in rows] == sorted(r.Seq for r in rows)
    assert rows[2].Instance is not None
    assert rows[2].Instance.Checks[0].Status is CheckStatus.PASSING
    assert store.last_exported_seq("beta") == rows[-1].Seq
    assert list(store.exported_view("beta")) == ["web-1"]
    assert store.exported_view("gamma") == store.exported_view("beta")
    assert store.exported_changes("beta", after_seq=rows[1].Seq, limit=1) == [rows[2]]
    assert store.exported_peers() == ["beta", "gamma"]


def test_unexport_appends_removals(store: Store) -> None:
    """Taking a peer out of the config entry appends removals for that peer only."""
    store.register(web())
    store.set_exported_services(export(("*", ["beta"]), ("web", ["gamma"])))
    gamma_seq = store.last_exported_seq("gamma")
    store.set_exported_services(export(("web", ["gamma"])))
    assert store.exported_view("beta") == {}
    assert store.exported_changes("beta")[-1].Instance is None
    assert store.last_exported_seq("gamma") == gamma_seq
    store.delete_exported_services()
    assert store.exported_view("gamma") == {}
    assert store.exported_services() is None


def test_exported_entry_indexes(store: Store) -> None:
    """The stored entry comes back with Create/ModifyIndex; an identical put changes nothing."""
    store.set_exported_services(export(("web", ["beta"])))
    got = store.exported_services()
    assert got is not None
    assert got.CreateIndex == got.ModifyIndex > 0
    index = store.index
    store.set_exported_services(export(("web", ["beta"])))
    assert store.index == index


def test_state_survives_reopen(tmp_path: Path) -> None:
    """Catalog, checks, config, feed and index are on disk after close and reopen."""
    s = Store.open(tmp_path)
    s.register(web())
    s.update_check("service:web-1", CheckStatus.PASSING)
    s.set_exported_services(export(("web", ["beta"])))
    index, seq = s.index, s.last_exported_seq("beta")
    s.close()
    s2 = Store.open(tmp_path)
    try:
        assert s2.instances()[0].Checks[0].Status is CheckStatus.PASSING
        assert s2.exported_services() is not None
        assert (s2.index, s2.last_exported_seq("beta")) == (index, seq)
    finally:
        s2.close()


def test_sync_file_services(store: Store) -> None:
    """File sync registers, updates and removes only file-sourced instances."""
    store.register(web("api-1", name="api"))
    store.sync_file_services([web("web-1"), web("web-2")])
    assert {i.Source for i in store.list_local()} == {"api", "file"}
    store.sync_file_services([web("web-2", port=99)])
    assert [i.ID for i in store.instances()] == ["api-1", "web-2"]
    assert store.instance("web-2") == web("web-2", port=99)


def test_sync_refuses_one_check_id_twice_and_stores_nothing(store: Store) -> None:
    """Two instances of one file claiming a check id: refused whole, earlier state kept."""
    store.sync_file_services([web("web-1")])
    twin = ServiceInstance("web-2", "web", Checks=(HealthCheck("shared", "x"),))
    also = ServiceInstance("web-3", "web", Checks=(HealthCheck("shared", "x"),))
    with pytest.raises(StoreError, match="'shared' already belongs to service 'web-2'"):
        store.sync_file_services([web("web-1", port=81), twin, also])
    assert [i.ID for i in store.instances()] == ["web-1"]
    assert store.instance("web-1") == web("web-1")


@pytest.mark.parametrize("order", ["giver first", "taker first"])
def test_sync_moves_a_check_between_instances_in_any_order(store: Store, order: str) -> None:
    """A check id handed from one instance to another in one file is no conflict, whichever
    comes first in the file."""
    check = HealthCheck("handed", "x")
    store.sync_file_services(
        [ServiceInstance("a", "web", Checks=(check,)), ServiceInstance("b", "web")]
    )
    giver, taker = ServiceInstance("a", "web"), ServiceInstance("b", "web", Checks=(check,))
    store.sync_file_services([giver, taker] if order == "giver first" else [taker, giver])
    assert store.instance("a") == giver
    assert store.instance("b") == taker


def test_sync_of_many_services_feeds_every_change_once(store: Store) -> None:
    """A file touching more services than the one-pass threshold still appends exactly one
    feed row per exported change, and none for unchanged instances."""
    store.set_exported_services(export(("*", ["beta"])))
    many = [web(f"s{n}-1", name=f"s{n}") for n in range(400)]
    store.sync_file_services(many)
    assert len(store.exported_changes("beta", limit=10_000)) == 400
    last = store.last_exported_seq("beta")
    changed = [web("s7-1", name="s7", port=8080), *many[:7], *many[8:]]
    store.sync_file_services(changed)
    rows = store.exported_changes("beta", after_seq=last, limit=10_000)
    assert [(r.Key, r.Instance.Port if r.Instance else None) for r in rows] == [("s7-1", 8080)]


def test_imported_catalog_is_separate(store: Store) -> None:
    """Imported instances are per peer, never mixed with local ones, with a stale flag."""
    store.register(web())
    store.replace_imported("beta", [web("b-1", name="db"), web("b-2", name="db")])
    assert [i.ID for i in store.imported_instances("beta", "db")] == ["b-1", "b-2"]
    assert store.imported_instances("gamma") == []
    assert [i.ID for i in store.instances()] == ["web-1"]
    store.apply_imported("beta", [web("b-3", name="cache")], ["b-1"])
    assert store.imported_service_names("beta") == {"cache": [], "db": []}
    assert store.imported_stale("beta") is False
    store.set_imported_stale("beta", True)
    assert store.imported_stale("beta") is True
    assert store.imported_peers() == ["beta"]
    store.drop_imported("beta")
    assert store.imported_instances("beta") == []
    assert store.imported_peers() == []


def test_one_imported_service_is_read_without_scanning_the_peer(store: Store) -> None:
    """A health query for one imported service reads that service's rows, not the peer's
    whole imported set (which the planner once scanned to skip a sort). The agent answers
    from its in-memory view; a read-only store (the debugging tools beside a running agent)
    reads the table.

    Counted in SQLite VM steps, not time: the same on every machine."""
    store.replace_imported(
        "beta", [web(f"s{n // 10}-{n % 10}", name=f"s{n // 10}") for n in range(5000)]
    )
    reader = Store.open_readonly(store.path.parent)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    try:
        with reader._read() as conn:  # the connection the reads below use too
            conn.set_progress_handler(count, 100)
        got = reader.imported_instances("beta", "s42")
        assert [i.ID for i in got] == [f"s42-{n}" for n in range(10)]
        one_service, steps = steps, 0
        assert len(reader.imported_instances("beta")) == 5000
        whole_peer = steps
    finally:
        reader.close()
    assert one_service * 50 < whole_peer, (one_service, whole_peer)


def test_on_change_called_after_commit(tmp_path: Path) -> None:
    """The change callback sees the new index, and only for real changes."""
    seen: list[Change] = []
    s = Store.open(tmp_path, on_change=seen.append)
    try:
        s.register(web())
        s.register(web())
        s.deregister("missing")
        assert [change.catalog_index for change in seen] == [s.index]
    finally:
        s.close()


def test_each_local_write_names_the_services_whose_answers_it_may_change(
    tmp_path: Path,
) -> None:
    """Blocking queries on the local catalog wake by service: a write names the services its
    instances were in and are in now; a config change, which may change any, wakes all."""
    seen: list[Change] = []
    s = Store.open(tmp_path, on_change=seen.append)

    def wakes(write: Callable[[], object]) -> Wake | None:
        seen.clear()
        write()
        assert len(seen) == 1
        assert seen[0].catalog_index == s.index
        return seen[0].wake

    try:
        assert wakes(lambda: s.register(web(ttl=5.0), now=100.0)) == Wake(None, frozenset({"web"}))
        both = frozenset({"web", "api"})
        assert wakes(lambda: s.register(web(name="api"), now=100.0)) == Wake(None, both)
        check = "service:web-1"
        one = Wake(None, frozenset({"api"}))
        assert wakes(lambda: s.update_check(check, CheckStatus.WARNING, now=100.0)) == one
        assert wakes(lambda: s.expire_ttl_checks(now=200.0)) == one
        assert wakes(lambda: s.sync_file_services([web("db-1", name="db")], now=100.0)) == Wake(
            None, frozenset({"db"})
        )
        assert wakes(lambda: s.sync_file_services([], now=100.0)) == Wake(None, frozenset({"db"}))
        assert wakes(lambda: s.deregister("web-1")) == one
        assert wakes(lambda: s.set_exported_services(export(("web", ["west"])))) == LOCAL
    finally:
        s.close()


def test_notifier_wakes_waiter_from_worker_thread(tmp_path: Path) -> None:
    """A blocking waiter wakes when a write in a worker thread commits a new index."""

    async def main() -> None:
        s = Store.open(tmp_path)
        notifier = IndexNotifier()
        notifier.bind(s.index)
        s.set_on_change(notifier.notify)
        start = s.index
        woke: list[int] = []
        woken = notifier.watch(None, "web")

        async def waiter() -> None:
            await woken.wait()
            woke.append(notifier.index_of(None, "web"))

        try:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await anyio.sleep(0.05)
                    assert woke == []
                    await anyio.to_thread.run_sync(s.register, web())
            assert woke == [start + 1]
        finally:
            s.close()

    anyio.run(main)


def test_incremental_export_matches_full_recompute(store: Store) -> None:
    """The per-instance refresh leaves the same view as recomputing everything (rename too)."""
    from agent import catalog

    store.set_exported_services(export(("web", ["beta"]), ("db", ["gamma"])))
    store.register(web("x-1", name="web"))
    store.register(web("x-2", name="web"))
    store.register(web("x-1", name="db"))  # same id moves from web to db
    store.update_check("service:x-2", CheckStatus.PASSING)
    store.deregister("x-2")
    full = catalog.exported_view(store.instances(), store.exported_services())
    assert {p: store.exported_view(p) for p in ("beta", "gamma")} == {
        "beta": full.get("beta", {}),
        "gamma": full.get("gamma", {}),
    }
    assert list(store.exported_view("gamma")) == ["x-1"]
    assert store.exported_changes("beta")[-1].Instance is None


def test_random_writes_keep_the_exported_view_and_feed_exact(store: Store) -> None:
    """Registers (renames, checks added and dropped), check updates, deregisters, file syncs
    and config changes in a random order: after each, the stored view is what a full
    recompute gives and every stored check belongs to its instance; replaying the feed from
    the start gives the stored view too (so no change was missed or doubled)."""
    import random

    from agent import catalog

    rng = random.Random(8)
    names, peers = ["web", "db", "api"], ["beta", "gamma"]
    ids = [f"i-{n}" for n in range(12)]

    def entry() -> ExportedServicesEntry:
        chosen = [(n, rng.sample(peers, rng.randint(0, 2))) for n in rng.sample(names, 2)]
        return export(*chosen)

    def instance(id_: str) -> ServiceInstance:
        base = web(id_, name=rng.choice(names), port=rng.randint(1, 4))
        extra = HealthCheck(f"extra:{id_}", "ttl", TTLSeconds=5.0, ServiceID=id_)
        checks = rng.choice([(), base.Checks, (extra,), (*base.Checks, extra)])
        return ServiceInstance(ID=id_, Name=base.Name, Port=base.Port, Checks=checks)

    store.set_exported_services(entry())
    for _ in range(300):
        op, id_ = rng.random(), rng.choice(ids)
        if op < 0.45:
            store.register(instance(id_))
        elif op < 0.65:
            status = rng.choice([CheckStatus.PASSING, CheckStatus.WARNING, CheckStatus.CRITICAL])
            store.update_check(f"service:{id_}", status)
        elif op < 0.8:
            store.deregister(id_)
        elif op < 0.95:
            picked = rng.sample(ids, rng.randint(0, 4))
            store.sync_file_services([instance(i) for i in picked])
        else:
            store.set_exported_services(entry())
        full = catalog.exported_view(store.instances(), store.exported_services())
        for peer in peers:
            assert store.exported_view(peer) == full.get(peer, {})
        owned = sorted((c.CheckID, i.ID) for i in store.instances() for c in i.Checks)
        assert sorted((c.CheckID, c.ServiceID) for c in store.checks()) == owned
        for name in names:  # read through the name's index, which same-name writes skip
            assert [i.ID for i in store.instances(name)] == sorted(
                i.ID for i in store.instances() if i.Name == name
            )
    for peer in peers:
        replayed: dict[str, ServiceInstance] = {}
        for row in store.exported_changes(peer, limit=100_000):
            if row.Instance is None:
                replayed.pop(row.Key, None)
            else:
                replayed[row.Key] = row.Instance
        assert replayed == store.exported_view(peer)


def test_a_write_of_one_instance_does_not_read_its_whole_service(store: Store) -> None:
    """Registering, checking and deregistering one instance costs the same in a service of
    5,000 instances as in a service of one: the exported view is refreshed for that instance,
    not its service (it was O(service): 45 ms per register at 10,000).

    Counted in SQLite VM steps on the writer's connection, not time."""
    store.set_exported_services(export(("big", ["beta"]), ("small", ["beta"])))
    store.sync_file_services(
        [web(f"b-{n}", name="big") for n in range(5000)] + [web("s-0", name="small")]
    )
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    store._conn.set_progress_handler(count, 100)

    def cost(service: str) -> int:
        nonlocal steps
        steps = 0
        store.register(web(f"{service}-new", name=service, port=1))
        store.register(web(f"{service}-new", name=service, port=2))
        store.update_check(f"service:{service}-new", CheckStatus.PASSING)
        store.deregister(f"{service}-new")
        return steps

    small, big = cost("small"), cost("big")
    assert big < small * 2 + 20, (small, big)
    assert store.exported_view("beta").keys() == {f"b-{n}" for n in range(5000)} | {"s-0"}


def test_hot_path_commits_update_rows_in_place(tmp_path: Path) -> None:
    """A register, a check update, an import and a publisher save of one instance each
    write few pages to the WAL: their upserts update rows in place, where INSERT OR REPLACE
    (and a delete and insert of every check) rewrote a page of every index as well: 17, 14,
    6 and 6 pages before, 10, 8, 3 and 1 now.

    Counted in WAL frames, not time; the median of five, as a B-tree split adds a page now
    and then."""
    from agent.wire.keys import Direction, new_keyring

    store = Store.open(tmp_path)
    store._conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows while we count
    wal = tmp_path / "agent.db-wal"
    store.set_exported_services(export(("*", ["beta"])))
    store.sync_file_services([web(f"s-{n}", name=f"s{n // 10}") for n in range(2000)])
    store.replace_imported("beta", [web(f"s-{n}", name=f"s{n // 10}") for n in range(2000)])
    keyring = new_keyring(b"\1" * 32, "p-1", Direction.ACCEPTOR_TO_DIALER)
    import_cursor = store.load_import("beta", "p-1", keyring)
    publisher = store.load_publisher("p-2", keyring)
    statuses = [CheckStatus.PASSING, CheckStatus.CRITICAL]

    def frames(write: Callable[[int], object]) -> float:
        counts = []
        for n in range(5):
            before = wal.stat().st_size
            write(n)
            counts.append((wal.stat().st_size - before) // (4096 + 24))
        return statistics.median(counts)

    try:
        assert frames(lambda n: store.register(web("s-5", name="s0", port=n), durable=False)) <= 10
        assert frames(lambda n: store.update_check("service:s-5", statuses[n % 2])) <= 8
        assert (
            frames(
                lambda n: store.commit_import(
                    "beta", "p-1", import_cursor, [web("s-5", port=n)], []
                )
            )
            <= 3
        )
        fingerprint = "instance/s-5"
        assert (
            frames(
                lambda n: store.save_publisher(
                    "p-2", publisher, {fingerprint: str(n)}, durable=False
                )
            )
            <= 1
        )
    finally:
        store.close()


def test_only_durable_writes_commit_with_the_fsync(store: Store) -> None:
    """Durable writes (the default) commit with ``synchronous=FULL``; the writes on a
    change's way to a peer (``durable=False``) with NORMAL, and the connection stays at
    NORMAL between writes whatever happened (even after a write that failed)."""
    seen: list[int] = []

    def apply(conn: Any, _index: int, _touched: object) -> bool:
        seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
        return False

    def failing(conn: Any, index: int, touched: object) -> bool:
        apply(conn, index, touched)
        raise StoreError("refused")

    store._write(apply, exported="none")
    store._write(apply, exported="none", durable=False)
    with pytest.raises(StoreError):
        store._write(failing, exported="none")
    seen.append(store._conn.execute("PRAGMA synchronous").fetchone()[0])
    assert seen == [2, 1, 2, 1]  # FULL, NORMAL, FULL, then NORMAL again


def test_prune_exported_changes_keeps_newest(store: Store) -> None:
    """Pruning drops acknowledged rows but keeps the newest seq and the materialised view."""
    store.set_exported_services(export(("web", ["beta"])))
    for port in (1, 2, 3):
        store.register(web(port=port))
    last = store.last_exported_seq("beta")
    assert store.prune_exported_changes("beta", last) == 2
    assert store.last_exported_seq("beta") == last
    assert [r.Seq for r in store.exported_changes("beta")] == [last]
    assert store.exported_view("beta")["web-1"].Port == 3
    assert store.exported_peers() == ["beta"]


def test_a_register_into_an_exported_service_reads_no_config_entry(store: Store) -> None:
    """The exported-services entry is read once and kept until a config write: the write of
    one instance, on every change's way to the peers, runs one statement less."""
    store.set_exported_services(export(("web", ["beta"])))
    store.register(web("web-1"))
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        store.register(web("web-2"))
    finally:
        store._conn.set_trace_callback(None)
    assert not [s for s in statements if "config_entries" in s]
    assert [r.Key for r in store.exported_changes("beta")] == ["web-1", "web-2"]
    store.set_exported_services(export(("web", ["beta", "gamma"])))
    store.register(web("web-3"))
    assert [r.Key for r in store.exported_changes("gamma")] == ["web-1", "web-2", "web-3"]
    store.delete_exported_services()
    store.register(web("web-4"))
    assert store.exported_view("beta") == {}
