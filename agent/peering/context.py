"""What the peering loops share: the store, the tracker, the clock and per-peering signals."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import anyio

from agent import kafka_client, metrics
from agent.kafka_client import KafkaSettings
from agent.notifier import IndexNotifier
from agent.peering.tracker import PeeringTracker
from agent.store import Store

log = logging.getLogger("agent.peering")

# Back-off between attempts when Kafka cannot be reached: quick first, capped.
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


@dataclasses.dataclass
class PeeringSignals:
    """Requests from the API or the importer to the exporter of the same peering."""

    republish: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    rotate: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    # Our importer could not repair the stream it reads from the topic: ask the peer (with a
    # ResyncRequest on the stream we export) to republish its full view.
    ask_peer_republish: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    woken: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    def request_republish(self) -> None:
        self.republish.set()
        self.woken.set()

    def request_peer_republish(self) -> None:
        self.ask_peer_republish.set()
        self.woken.set()

    def request_rotation(self) -> None:
        self.rotate.set()
        self.woken.set()


@dataclasses.dataclass
class PeeringContext:
    store: Store
    notifier: IndexNotifier
    tracker: PeeringTracker
    clock: Callable[[], float]
    local_cluster: str
    home_kafka: KafkaSettings
    heartbeat_interval: float
    signals: dict[str, PeeringSignals] = dataclasses.field(default_factory=dict)

    def signals_for(self, name: str) -> PeeringSignals:
        return self.signals.setdefault(name, PeeringSignals())


def kafka_label(kafka: KafkaSettings) -> str:
    return kafka.bootstrap[0] if kafka.bootstrap else ""


async def retry_forever(
    what: str, kafka: KafkaSettings, attempt: Callable[[], Awaitable[None]]
) -> None:
    """Run ``attempt`` until it returns; Kafka being unreachable is waited out, not fatal.

    The agent keeps serving its catalogs while Kafka is down (graceful degradation); the
    connection gauge and a warning per outage tell the operator. Anything that is not a
    Kafka or network error is a bug and propagates to the supervisor.
    """
    delay = RETRY_FIRST_SECONDS
    label = kafka_label(kafka)
    while True:
        started = anyio.current_time()
        try:
            await attempt()
        except (kafka_client.KafkaError, OSError, TimeoutError) as error:
            metrics.set_kafka_connected(label, False)
            if anyio.current_time() - started > RETRY_MAX_SECONDS * 2:
                delay = RETRY_FIRST_SECONDS  # it worked for a while: a new outage
            log.warning("%s: Kafka at %s unavailable (%r); retrying in %.1fs", what, label,
                        error, delay)  # fmt: skip
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        else:
            return
