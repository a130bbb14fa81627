"""Topic layout on the acceptor's Kafka (pure names and settings, no I/O).

- ``peering-bootstrap.<acceptor cluster>``: the handshake meeting point. Delete policy with a
  short retention: requests and answers are only useful for minutes.
- ``peering-stream.<peering id>.<direction>``: one compacted topic per peering and direction.
  The peering id is random, so topic names reveal neither cluster nor service names beyond
  what the bootstrap topic already shows.
"""

from __future__ import annotations

from agent.wire.keys import Direction

BOOTSTRAP_PREFIX = "peering-bootstrap."
STREAM_PREFIX = "peering-stream."

_DIRECTION_SUFFIX = {Direction.ACCEPTOR_TO_DIALER: "a2d", Direction.DIALER_TO_ACCEPTOR: "d2a"}

# Bootstrap records live one day: long enough for a slow dialer, short enough to stay small.
BOOTSTRAP_CONFIG = {"retention.ms": str(24 * 3600 * 1000), "cleanup.policy": "delete"}

# Stream topics: compaction keeps the newest record per key, so the topic alone rebuilds the
# exporter's exact view (promise 4). Removals are ordinary (encrypted) records, never
# tombstones, so they are kept too and nothing unauthenticated decides what disappears.
STREAM_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "0",
    "max.message.bytes": str(1024 * 1024),
}


def bootstrap_topic(acceptor_cluster: str) -> str:
    return BOOTSTRAP_PREFIX + acceptor_cluster


def stream_topic(peering_id: str, direction: Direction) -> str:
    return f"{STREAM_PREFIX}{peering_id}.{_DIRECTION_SUFFIX[direction]}"
