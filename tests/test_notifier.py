"""Blocking queries are woken by the commits that may change their answer, and only those;
each answer's X-Consul-Index moves with exactly those commits."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from agent.notifier import LOCAL, AnswerIndexes, Change, IndexNotifier, Wake, imported


def _woken(notifier: IndexNotifier, change: Change) -> set[tuple[str | None, str | None]]:
    keys = [(None, "web"), (None, None), ("east", "web"), ("east", "db"), ("east", None)]
    keys.append(("west", "web"))
    events = {key: notifier.watch(*key) for key in keys}
    notifier.notify(change)
    return {key for key, event in events.items() if event.is_set()}


def test_a_change_to_one_imported_service_wakes_its_watchers_and_the_whole_peer_ones() -> None:
    notifier = IndexNotifier()
    woken = _woken(notifier, Change(5, imported("east", ["web"])))
    assert woken == {("east", "web"), ("east", None)}
    assert notifier.index == 5


def test_a_renamed_instance_wakes_both_of_its_services() -> None:
    notifier = IndexNotifier()
    woken = _woken(notifier, Change(5, imported("east", ["web", "db"])))
    assert woken == {("east", "web"), ("east", "db"), ("east", None)}


def test_a_whole_peer_change_wakes_every_watcher_of_that_peer_only() -> None:
    woken = _woken(IndexNotifier(), Change(5, imported("east")))
    assert woken == {("east", "web"), ("east", "db"), ("east", None)}


def test_a_local_write_wakes_the_local_watchers_only() -> None:
    woken = _woken(IndexNotifier(), Change(5, LOCAL))
    assert woken == {(None, "web"), (None, None)}


def test_a_change_that_cannot_say_wakes_everyone() -> None:
    woken = _woken(IndexNotifier(), Change(5))
    assert len(woken) == 6


def test_a_woken_subscription_is_spent_and_the_next_one_waits_for_the_next_change() -> None:
    notifier = IndexNotifier()
    first = notifier.watch("east", "web")
    notifier.notify(Change(2, Wake("east", frozenset({"web"}))))
    second = notifier.watch("east", "web")
    assert first.is_set()
    assert not second.is_set()
    notifier.notify(Change(3, Wake("east", frozenset({"db"}))))
    assert not second.is_set()
    assert notifier.index == 3  # the index moves with every change


def test_close_releases_every_watcher() -> None:
    async def main() -> None:
        notifier = IndexNotifier(index=7)
        notifier.bind(7)
        events = [notifier.watch("east", "web"), notifier.watch(None, None)]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                for event in events:
                    group.start_soon(event.wait)
                await anyio.sleep(0.01)
                notifier.close()
        assert notifier.closed

    anyio.run(main)


def test_a_change_from_a_worker_thread_wakes_on_the_loop() -> None:
    async def main() -> None:
        notifier = IndexNotifier()
        notifier.bind(1)
        event = notifier.watch("east", "web")
        await anyio.to_thread.run_sync(notifier.notify, Change(2, imported("east", ["web"])))
        with anyio.fail_after(5):
            await event.wait()
        assert notifier.index == 2

    anyio.run(main)


KEYS = [(None, "web"), (None, None), ("east", "web"), ("east", "db"), ("east", None)]
KEYS.append(("west", "web"))


def test_an_answer_index_moves_only_with_its_own_changes() -> None:
    indexes = AnswerIndexes(start=10)
    assert {indexes.of(*key) for key in KEYS} == {10}
    indexes.record(Change(11, imported("east", ["web"])))
    assert indexes.of("east", "web") == indexes.of("east", None) == 11
    assert indexes.of("east", "db") == indexes.of(None, "web") == indexes.of("west", "web") == 10
    indexes.record(Change(12, LOCAL))  # a local write that cannot name its services
    assert indexes.of(None, "web") == indexes.of(None, None) == 12
    assert indexes.of("east", "web") == 11
    indexes.record(Change(13, imported("east")))  # the whole peer, e.g. a resync
    assert indexes.of("east", "db") == indexes.of("east", "web") == 13
    indexes.record(Change(14))  # cannot say: every answer moves
    assert {indexes.of(*key) for key in KEYS} == {14}


def test_an_answer_index_is_never_zero() -> None:
    """Consul's rule: index 0 would make a client's next query return at once, forever."""
    assert AnswerIndexes().of("east", "web") == 1
    assert AnswerIndexes().of(None, None) == 1


def test_too_many_services_fold_into_one_index_of_their_catalog() -> None:
    indexes = AnswerIndexes(start=1, max_tracked=2)
    indexes.record(Change(2, imported("east", ["a"])))
    indexes.record(Change(3, imported("east", ["b"])))
    assert indexes.of("east", "a") == 2
    indexes.record(Change(4, imported("east", ["c"])))
    # Folded: every service of east answers with the newest of them (one spurious wake-up
    # for their watchers, never an index older than a change they have not seen).
    assert indexes.of("east", "a") == indexes.of("east", "b") == indexes.of("east", "z") == 4
    assert indexes.of("west", "a") == 1


_wakes = st.one_of(
    st.none(),
    st.builds(Wake, st.sampled_from([None, "east", "west"]), st.none()),
    st.builds(
        Wake,
        st.sampled_from([None, "east", "west"]),
        st.frozensets(st.sampled_from(["web", "db", "api"]), min_size=1),
    ),
)


@given(st.lists(_wakes, max_size=12), st.integers(1, 3))
def test_an_answer_index_moves_exactly_when_its_watchers_are_woken(
    wakes: list[Wake | None], max_tracked: int
) -> None:
    """Whatever the commits, a watcher is woken if and only if its answer's index moved, and
    the index never goes back: a client waiting on it can miss no change it could see."""
    notifier = IndexNotifier(index=5, max_tracked_services=max_tracked)  # small: folds often
    for step, wake in enumerate(wakes, start=6):
        before = {key: notifier.index_of(*key) for key in KEYS}
        events = {key: notifier.watch(*key) for key in KEYS}
        notifier.notify(Change(step, wake))
        for key in KEYS:
            after = notifier.index_of(*key)
            assert after >= before[key]
            if events[key].is_set():
                assert after == step, key
            elif after != before[key]:
                # Only folding may move an index without a wake-up, never backwards.
                assert max_tracked < 3, key


def test_a_config_entry_index_moves_with_whole_catalog_changes_only() -> None:
    indexes = AnswerIndexes(start=3)
    indexes.record(Change(4, Wake(None, frozenset({"web"}))))  # a register
    indexes.record(Change(5, imported("east")))  # a swap of what east exports here
    assert indexes.of_whole(None) == 3
    indexes.record(Change(6, LOCAL))  # a config change
    assert indexes.of_whole(None) == 6
    indexes.record(Change(7))
    assert indexes.of_whole(None) == 7
