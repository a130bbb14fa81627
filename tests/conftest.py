"""Shared fixtures: real Kafka brokers (tests.kafka_fixtures) and agent processes."""

pytest_plugins = ["tests.kafka_fixtures"]
