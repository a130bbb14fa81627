"""The live status of every peering: the only writer of peering records.

Loops, the API and the supervisor feed inputs here; the pure state machine decides; the
tracker persists the record when its state changes (timestamps such as LastReceive stay in
memory, they are cheap to lose) and carries out the actions that only touch local state
(imported services stale, fresh or removed). Readers get frozen records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import msgspec

from agent import metrics
from agent.peering.records import PeeringRecord, with_status
from agent.peering_state import Action, Input, PeeringState, step
from agent.store import Store

log = logging.getLogger("agent.peering")

# Actions carried out here; the rest (streams, topics, forgetting) follow from the state and
# are the supervisor's job.
_LOCAL_ACTIONS = frozenset(
    {Action.MARK_IMPORTS_STALE, Action.MARK_IMPORTS_FRESH, Action.REMOVE_IMPORTED_SERVICES}
)


class PeeringTracker:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self.clock = clock
        self._records: dict[str, PeeringRecord] = {r.Name: r for r in store.load_peerings()}
        self._changed = anyio.Event()
        # Moves on every change, so a waiter cannot miss one that happened before it waited.
        self.version = 0
        for record in self._records.values():
            metrics.init_peer(record.Name, record.ID, record.role.value)
            metrics.set_peering_state(record.Name, record.state)

    # --- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> PeeringRecord | None:
        return self._records.get(name)

    def by_id(self, peering_id: str) -> PeeringRecord | None:
        for record in self._records.values():
            if peering_id == record.ID:
                return record
        return None

    def all(self) -> list[PeeringRecord]:
        return sorted(self._records.values(), key=lambda r: r.Name)

    async def wait_changed(self, since: int) -> None:
        """Return once ``version`` moved past ``since``."""
        while self.version == since:
            await self._changed.wait()

    # --- writing ---------------------------------------------------------------------------

    def _signal(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    def put(self, record: PeeringRecord) -> PeeringRecord:
        """Persist a whole record (created, established, keys rotated)."""
        previous = self._records.get(record.Name)
        record = self._store.save_peering(record)
        self._records[record.Name] = record
        if previous is None:
            metrics.init_peer(record.Name, record.ID, record.role.value)
        metrics.set_peering_state(record.Name, record.state)
        if previous is None or previous.state is not record.state:
            log.info(
                "peering %s (%s): %s -> %s",
                record.Name,
                record.ID,
                previous.state.value if previous else "new",
                record.state.value,
                extra={
                    "peer": record.Name,
                    "peering_id": record.ID,
                    "event": "state_change",
                    "from_state": previous.state.value if previous else None,
                    "to_state": record.state.value,
                },
            )
        self._signal()
        return record

    def forget(self, name: str) -> None:
        record = self._records.pop(name, None)
        if record is None:
            return
        self._store.forget_peering(record.Name, record.ID)
        metrics.forget_peering(record.Name)
        log.info(
            "peering %s (%s) forgotten",
            name,
            record.ID,
            extra={"peer": name, "peering_id": record.ID, "event": "forgotten"},
        )
        self._signal()

    def feed(self, name: str, event: Input) -> list[Action]:
        """Apply one input to a peering; returns the actions left for the caller."""
        record = self._records.get(name)
        if record is None:
            return []
        status, actions = step(record.Status, event)
        if status.State is not record.state:
            self.put(with_status(record, status))
        elif status != record.Status:
            # Timestamps only: memory is enough, the next state change persists them.
            self._records[name] = with_status(record, status)
        for action in actions:
            if action in _LOCAL_ACTIONS:
                self._local_action(record, action)
        return [a for a in actions if a not in _LOCAL_ACTIONS]

    def _local_action(self, record: PeeringRecord, action: Action) -> None:
        if action is Action.MARK_IMPORTS_STALE:
            self._store.set_imported_stale(record.Name, True)
        elif action is Action.MARK_IMPORTS_FRESH:
            self._store.set_imported_stale(record.Name, False)
        elif action is Action.REMOVE_IMPORTED_SERVICES:
            self._store.drop_imported(record.Name)

    def update(self, name: str, **changes: object) -> PeeringRecord | None:
        """Replace fields of a record and persist it (keyrings, peer key, token)."""
        record = self._records.get(name)
        if record is None:
            return None
        return self.put(msgspec.structs.replace(record, **changes))


def is_streaming(state: PeeringState) -> bool:
    return state in (PeeringState.ACTIVE, PeeringState.FAILING)
