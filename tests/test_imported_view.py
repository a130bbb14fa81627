"""The in-memory imported view: ``?peer=`` reads answer from it, an importer's batch reaches it
(and the blocking queries) before its commit, and it never disagrees with the ``imported``
table once a write is committed."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

from agent.imported_view import ImportedView
from agent.model import ServiceInstance
from agent.notifier import Change, IndexNotifier, Wake
from agent.reducer import ImportState
from agent.store import Store
from agent.store_peering import ImportCursor
from agent.wire.events import instance_key as wire_key
from agent.wire.keys import Direction, new_keyring

KEYRING = new_keyring(b"r" * 32, "peering-1", Direction.ACCEPTOR_TO_DIALER)
CURSOR = ImportCursor(state=ImportState(), keyring=KEYRING)


def inst(id_: str, name: str = "web", port: int = 80) -> ServiceInstance:
    return ServiceInstance(ID=id_, Name=name, Port=port)


def table(store: Store, peer: str, name: str | None = None) -> list[ServiceInstance]:
    """What the ``imported`` table holds, read the way the debugging tools read it."""
    reader = Store.open_readonly(store.path.parent)
    try:
        return reader.imported_instances(peer, name)
    finally:
        reader.close()


def commit(store: Store, peer: str, ups: list[ServiceInstance], gone: list[str]) -> int:
    """An importer's batch, keys as on the wire."""
    return store.commit_import(peer, "peering-1", CURSOR, ups, [wire_key(k) for k in gone])


def test_reads_are_ordered_as_the_table_orders_them(store: Store) -> None:
    """Keys sort the same in memory as under SQLite's ORDER BY key, non-ASCII ones too."""
    ids = ["b", "a", "B", "é-1", "z", "ä", "a-10", "a-2", "日本", "~"]
    commit(store, "east", [inst(i, name="web" if n % 2 else "api") for n, i in enumerate(ids)], [])
    store.imported_instances("east")  # loaded
    commit(store, "east", [inst("0", name="web"), inst("ÿ", name="api")], [])
    for name in (None, "web", "api", "none"):
        assert store.imported_instances("east", name) == table(store, "east", name)
    assert [i.ID for i in store.imported_instances("east")][:3] == ["0", "B", "a"]


def test_a_random_mix_of_writes_keeps_the_view_equal_to_the_table(store: Store) -> None:
    """Batches (staged or not; renames across services, removals of present and absent
    keys), resync swaps, drops and deleted peerings: after each, every read equals the
    table."""
    rng = random.Random(7)
    services = ["web", "api", "db"]
    for step in range(300):
        peer = rng.choice(["east", "north"])
        action = rng.random()
        if action < 0.75:
            ups = [
                inst(f"i{rng.randrange(30)}", rng.choice(services), rng.randrange(3))
                for _ in range(rng.randrange(4))
            ]
            gone = [f"i{rng.randrange(30)}" for _ in range(rng.randrange(3))]
            gone = [wire_key(g) for g in gone if g not in {u.ID for u in ups}]
            # Half the batches go through the view first, as a live importer's do.
            staged = store.stage_import(peer, ups, gone) if rng.random() < 0.5 else None
            store.commit_import(peer, "peering-1", CURSOR, ups, gone, staged_index=staged)
        elif action < 0.85:
            swap = [inst(f"i{n}", rng.choice(services)) for n in rng.sample(range(30), 5)]
            store.commit_import(peer, "peering-1", CURSOR, swap, (), replace_all=True)
        elif action < 0.9:
            store.replace_imported(peer, [inst(f"r{n}") for n in range(rng.randrange(3))])
        elif action < 0.95:
            store.drop_imported(peer)
        else:
            store.forget_peering(peer, "peering-1")
        if step % 3 == 0:
            store.imported_instances(peer)  # sometimes loaded before the next write, sometimes not
        for name in (None, *services):
            assert store.imported_instances(peer, name) == table(store, peer, name), step


def test_a_staged_batch_is_read_and_woken_before_its_commit_which_takes_its_index(
    store: Store,
) -> None:
    commit(store, "east", [inst("web-1")], [])
    assert store.imported_instances("east", "web") == [inst("web-1")]  # loaded
    notified: list[Change] = []
    store.set_on_change(notified.append)
    before = store.index

    staged = store.stage_import("east", [inst("web-2")], [wire_key("web-1")])

    assert staged == before + 1
    assert notified == [Change(staged, Wake("east", frozenset({"web"})))]
    assert store.imported_instances("east", "web") == [inst("web-2")]
    assert table(store, "east") == [inst("web-1")]  # not committed yet
    assert store.index == before  # the table's index moves with the commit

    index = store.commit_import(
        "east", "peering-1", CURSOR, [inst("web-2")], [wire_key("web-1")], staged_index=staged
    )

    assert index == staged == store.index
    assert table(store, "east") == store.imported_instances("east") == [inst("web-2")]
    store.register(inst("local-1", name="local"))
    assert store.index == staged + 1


def test_a_write_between_stage_and_commit_takes_a_later_index(store: Store) -> None:
    """The staged index is handed out: nothing committed meanwhile may take it again, and the
    index never moves backwards."""
    store.imported_instances("east")
    staged = store.stage_import("east", [inst("web-1")], [])
    assert staged is not None
    local = store.register(inst("local-1", name="local"))
    assert local > staged
    index = store.commit_import(
        "east", "peering-1", CURSOR, [inst("web-1")], [], staged_index=staged
    )
    assert index == local == store.index
    assert store.register(inst("local-2", name="local")) == local + 1


def test_an_unstaged_batch_leaves_the_view_as_the_table_is(store: Store) -> None:
    """A staged batch whose commit never comes (the importer cancelled or crashed before it):
    the view reloads the table, and the index handed out is never handed out again."""
    commit(store, "east", [inst("web-1")], [])
    store.imported_instances("east")
    staged = store.stage_import("east", [inst("web-2")], [])
    assert staged is not None
    store.unstage_import("east")
    assert store.imported_instances("east") == [inst("web-1")]
    assert commit(store, "east", [inst("web-3")], []) == staged + 1


def test_nothing_is_staged_where_the_view_is_not_loaded_or_a_thread_holds_the_store(
    store: Store,
) -> None:
    assert store.stage_import("east", [inst("web-1")], []) is None  # not loaded: nobody reads
    store.imported_instances("east")
    assert store.stage_import("east", [], []) is None  # nothing to stage
    held, release = threading.Event(), threading.Event()

    def bulk_write() -> None:
        with store.writer_if_free():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=bulk_write)
    thread.start()
    try:
        assert held.wait(10)
        assert store.stage_import("east", [inst("web-1")], []) is None
    finally:
        release.set()
        thread.join()
    assert store.imported_instances("east") == []


def _read_when_woken(
    store: Store, write_in_thread: Callable[[], object], slow: str
) -> list[list[int]]:
    """Run ``write_in_thread`` in a worker thread, as an importer's commit goes while another
    thread holds the store, with the store's ``slow`` step (its view maintenance) taking
    0.2 s; a blocking query on the loop reads the view as soon as the write wakes it."""
    step = getattr(store, slow)

    def slowly(*args: object) -> None:
        time.sleep(0.2)
        step(*args)

    setattr(store, slow, slowly)
    notifier = IndexNotifier()
    seen: list[list[int]] = []

    async def scenario() -> None:
        notifier.bind(store.index)
        store.set_on_change(notifier.notify)
        woken = notifier.watch("east", "web")

        async def blocking_query() -> None:
            await woken.wait()
            seen.append([i.Port for i in store.imported_instances("east", "web")])

        async with anyio.create_task_group() as group:
            group.start_soon(blocking_query)
            await anyio.lowlevel.checkpoint()  # waiting
            await anyio.to_thread.run_sync(write_in_thread)

    anyio.run(scenario)
    return seen


def test_a_batch_committed_in_a_worker_thread_is_in_the_view_before_it_wakes_anyone(
    store: Store,
) -> None:
    """A query woken by the commit must find the batch: reading the old set under the new
    index, its watcher would then wait on that index while the set changes under it (seen
    in the 50-peer fan-out: a watcher answered 10 s late, at the end of its wait)."""
    commit(store, "east", [inst("web-1", port=80)], [])
    store.imported_instances("east")  # loaded

    seen = _read_when_woken(
        store, lambda: commit(store, "east", [inst("web-1", port=81)], []), "_imported_applied"
    )

    assert seen == [[81]]


def test_a_resync_swap_in_a_worker_thread_is_in_the_view_before_it_wakes_anyone(
    store: Store,
) -> None:
    commit(store, "east", [inst("web-1", port=80)], [])
    store.imported_instances("east")  # loaded

    def swap() -> None:
        store.commit_import("east", "peering-1", CURSOR, [inst("web-2", port=82)], [],
                            replace_all=True)  # fmt: skip

    assert _read_when_woken(store, swap, "_forget_imported") == [[82]]


def test_a_load_that_raced_a_write_is_not_kept() -> None:
    """A read that loads the peer while a write commits may have read the table before the
    commit: its load answers that read only, the next read loads again."""
    loads = 0

    def load(peer: str) -> list[ServiceInstance]:
        nonlocal loads
        loads += 1
        if loads == 1:
            view.apply(peer, [inst("web-2")], [])  # committed while we read
            return [inst("web-1")]
        return [inst("web-1"), inst("web-2")]

    view = ImportedView(load)
    assert [i.ID for i in view.instances("east")] == ["web-1"]
    assert [i.ID for i in view.instances("east")] == ["web-1", "web-2"]
    assert loads == 2
    assert [i.ID for i in view.instances("east", "web")] == ["web-1", "web-2"]
    assert loads == 2  # kept this time


def test_a_primed_peer_is_not_read_from_the_table_and_shares_the_instances(
    store: Store,
) -> None:
    """An importer primes the view with the set it loaded: no second copy, no read."""
    loaded = [inst("web-2"), inst("web-1"), inst("api-1", name="api")]
    commit(store, "east", loaded, [])
    store.prime_imported("east", loaded)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        got = store.imported_instances("east")
    finally:
        store._conn.set_trace_callback(None)
    assert statements == []
    assert [i.ID for i in got] == ["api-1", "web-1", "web-2"]
    assert all(any(g is o for o in loaded) for g in got)
    assert store.stage_import("east", [inst("web-3")], []) is not None


def test_a_rename_moves_an_instance_between_services() -> None:
    view = ImportedView(lambda peer: [inst("k", name="web")])
    view.instances("east")
    view.apply("east", [inst("k", name="api")], [])
    assert view.instances("east", "web") == []
    assert view.instances("east", "api") == [inst("k", name="api")]
    view.apply("east", [], ["k", "absent"])
    assert view.instances("east") == []


def test_an_importer_cancelled_between_stage_and_commit_leaves_the_table_view(
    store: Store,
) -> None:
    """Cancellation at the turn of the loop between the stage and the commit: nothing of the
    batch is committed, and the view says so again."""
    commit(store, "east", [inst("web-1")], [])
    store.imported_instances("east")

    async def importer_step() -> None:
        staged = store.stage_import("east", [inst("web-2")], [])
        try:
            await anyio.lowlevel.checkpoint()
            store.commit_import(
                "east", "peering-1", CURSOR, [inst("web-2")], [], staged_index=staged
            )
        except BaseException:
            store.unstage_import("east")
            raise

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(importer_step)
            await anyio.lowlevel.checkpoint()  # it staged and yields
            assert [i.ID for i in store.imported_instances("east")] == ["web-1", "web-2"]
            group.cancel_scope.cancel()

    anyio.run(scenario)
    assert store.imported_instances("east") == table(store, "east") == [inst("web-1")]


def test_an_import_wakes_the_watchers_of_the_services_it_touched(store: Store) -> None:
    """A batch names the services whose answers it may change, those its removed or renamed
    instances leave included: the stage and the commit after it, or a commit alone."""
    commit(store, "east", [inst("web-1"), inst("db-1", name="db")], [])
    store.imported_instances("east")  # loaded: the view knows which service a key was in
    notified: list[Change] = []
    store.set_on_change(notified.append)

    moved = inst("web-1", name="api")  # the same instance, now in another service
    staged = store.stage_import("east", [moved], [wire_key("db-1")])
    assert staged is not None
    store.commit_import(
        "east", "peering-1", CURSOR, [moved], [wire_key("db-1")], staged_index=staged
    )
    everything = Wake("east", frozenset({"web", "api", "db"}))
    assert notified == [Change(staged, everything), Change(staged, everything)]

    notified.clear()
    index = store.commit_import("east", "peering-1", CURSOR, [inst("web-2")], [])
    assert notified == [Change(index, Wake("east", frozenset({"web"})))]


def test_an_import_into_a_peer_not_loaded_wakes_all_of_that_peers_watchers(store: Store) -> None:
    notified: list[Change] = []
    store.set_on_change(notified.append)
    index = commit(store, "west", [inst("web-1")], [])
    assert notified == [Change(index, Wake("west", None))]
    notified.clear()
    index = store.drop_imported("west")
    assert notified == [Change(index, Wake("west", None))]
