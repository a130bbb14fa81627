"""Peering Agent: cluster peering for service catalogs, carried over Kafka."""

__version__ = "0.1.0.dev0"
