"""Shared fixtures: real Kafka brokers, agent processes and a real Prometheus server."""

pytest_plugins = [
    "tests.kafka_fixtures",
    "tests.agent_fixtures",
    "tests.prometheus_fixture",
    "tests.store_fixtures",
]
