"""Blocking queries are woken by the commits that may change their answer, and only those."""

from __future__ import annotations

import anyio

from agent.notifier import LOCAL, Change, IndexNotifier, Wake, imported


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


def test_close_releases_every_watcher_and_old_style_waiters() -> None:
    async def main() -> None:
        notifier = IndexNotifier(index=7)
        notifier.bind(7)
        events = [notifier.watch("east", "web"), notifier.watch(None, None)]
        got: list[int] = []

        async def old_style() -> None:
            got.append(await notifier.wait_beyond(7))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(old_style)
                await anyio.sleep(0.01)
                notifier.close()
        assert all(event.is_set() for event in events)
        assert got == [7]
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
