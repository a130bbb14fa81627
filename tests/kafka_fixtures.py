"""Pytest fixtures that run real Apache Kafka brokers on free loopback ports.

- ``kafka``: one broker shared by the whole session (the cheap default);
- ``topic_name``: a topic name unique to the test, so tests on the shared broker never meet;
- ``broker_factory``: private brokers for tests that kill, restart or need a second cluster.

Every broker a test starts is stopped when the test ends, also when it fails.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.devbroker import DevBroker, DevBrokerError

# A fresh data dir may lose the race for its free port; a few tries make that a non-event.
_START_ATTEMPTS = 3


def start_broker(data_dir: Path, *, extra_properties: dict[str, str] | None = None) -> DevBroker:
    """Start a broker on a new data dir and wait until it answers metadata requests."""
    last_error: DevBrokerError | None = None
    for attempt in range(_START_ATTEMPTS):
        attempt_dir = data_dir if attempt == 0 else data_dir.with_name(f"{data_dir.name}-{attempt}")
        broker = DevBroker(attempt_dir, extra_properties=extra_properties)
        broker.start()
        try:
            broker.wait_ready()
        except DevBrokerError as error:
            broker.kill()
            last_error = error
            continue
        return broker
    raise DevBrokerError(f"broker did not start after {_START_ATTEMPTS} attempts: {last_error}")


class BrokerFactory:
    """Starts private brokers for one test and owns their shutdown."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._brokers: list[DevBroker] = []

    def start(self, name: str = "broker", **properties: str) -> DevBroker:
        broker = start_broker(self._base / name, extra_properties=properties or None)
        self._brokers.append(broker)
        return broker

    def crash_and_restart(self, broker: DevBroker) -> float:
        """SIGKILL the broker, then start it again on the same data dir and port."""
        broker.kill()
        broker.start()
        return broker.wait_ready()

    def close(self) -> None:
        for broker in self._brokers:
            broker.resume()  # a SIGSTOPped JVM would ignore SIGTERM until it times out
            broker.stop(timeout=15)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    """The session's shared broker."""
    broker = start_broker(tmp_path_factory.mktemp("kafka-shared") / "broker")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka: DevBroker) -> str:
    return kafka.bootstrap


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names unique to this test: ``topic_name("stream")``."""
    stem = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:60].strip("-")
    run = uuid.uuid4().hex[:8]

    def make(suffix: str = "t") -> str:
        return f"test-{stem}-{run}-{suffix}"

    return make


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
