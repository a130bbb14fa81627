"""Every Prometheus metric object of the agent, in one place.

Metrics live in the default registry so the process/platform collectors come along for free.
Label values are bounded: HTTP routes are labelled with their template
(``/v1/health/service/{name}``), never the raw path, so a scanner cannot blow up cardinality.
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "peering_http_requests_total",
    "HTTP API requests by route template, method and status code.",
    ["route", "method", "code"],
)
HTTP_DURATION = Histogram(
    "peering_http_request_duration_seconds",
    "HTTP API request latency (blocking queries included) by route template.",
    ["route", "method"],
)
HTTP_BLOCKING_QUERIES = Gauge(
    "peering_http_blocking_queries",
    "Blocking queries (GET with ?index=) open now, waiting for a change or their ?wait.",
)
CATALOG_INDEX = Gauge(
    "peering_catalog_index",
    "The catalog index (X-Consul-Index) after the last committed change.",
)
TTL_CHECKS_EXPIRED = Counter(
    "peering_ttl_checks_expired_total",
    "TTL checks that went critical because no heartbeat arrived in time.",
)
SERVICES_FILE_RELOADS = Counter(
    "peering_services_file_reloads_total",
    "Services file loads, by result (ok or error).",
    ["result"],
)

# --- peering (names and labels: docs/metrics.md) ---------------------------------------------

PEERING_STATES = ("PENDING", "ESTABLISHING", "ACTIVE", "FAILING", "DELETING", "TERMINATED")

PEERING_STATE = Gauge(
    "peering_state", "1 for the peering's current state, 0 for the others.", ["peer", "state"]
)
PEERING_INFO = Gauge(
    "peering_info",
    "Always 1: the peering's id and this side's role.",
    ["peer", "peering_id", "role"],
)
EXPORTED_SERVICES = Gauge("peering_exported_services", "Services exported to the peer.", ["peer"])
EXPORTED_INSTANCES = Gauge(
    "peering_exported_instances", "Instances exported to the peer.", ["peer"]
)
IMPORTED_SERVICES = Gauge("peering_imported_services", "Services imported from the peer.", ["peer"])
IMPORTED_INSTANCES = Gauge(
    "peering_imported_instances", "Instances imported from the peer.", ["peer"]
)
LAST_HEARTBEAT = Gauge(
    "peering_last_heartbeat_received_timestamp_seconds",
    "Unix time of the last heartbeat received from the peer.",
    ["peer"],
)
LAST_RECEIVED = Gauge(
    "peering_last_record_received_timestamp_seconds",
    "Unix time of the last record applied from the peer.",
    ["peer"],
)
LAST_SENT = Gauge(
    "peering_last_record_sent_timestamp_seconds",
    "Unix time of the last record the broker acknowledged to us.",
    ["peer"],
)
EVENTS_PUBLISHED = Counter(
    "peering_events_published_total", "Events published to the peer.", ["peer", "type"]
)
EVENTS_APPLIED = Counter(
    "peering_events_applied_total", "Events applied from the peer's stream.", ["peer", "type"]
)
RECORDS_REJECTED = Counter(
    "peering_records_rejected_total", "Stream records not applied, by reason.", ["peer", "reason"]
)
PROPAGATION_DELAY = Histogram(
    "peering_propagation_delay_seconds",
    "Time from a change on the exporter to its application on the importer.",
    ["peer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge(
    "peering_consumer_lag_records",
    "Records between the importer's position and the end of the peer's stream.",
    ["peer"],
)
RESYNCS = Counter(
    "peering_resyncs_total", "Rebuilds of the imported set from the topic.", ["peer", "reason"]
)
KEY_ROTATIONS = Counter(
    "peering_key_rotations_total", "Stream key rotations started by this side.", ["peer"]
)
HANDSHAKES = Counter(
    "peering_handshakes_total", "Establish attempts by role and result.", ["role", "result"]
)
TOKENS_GENERATED = Counter("peering_tokens_generated_total", "Peering tokens generated.")
KAFKA_CONNECTED = Gauge(
    "peering_kafka_connected",
    "1 when the last request to that Kafka cluster succeeded.",
    ["kafka"],
)

# The last known connection state per Kafka cluster, for /v1/agent/self: label -> (connected,
# unix time of the last change). The gauge is what Prometheus sees; this is what people read.
_KAFKA_STATE: dict[str, tuple[bool, float]] = {}


def set_kafka_connected(kafka: str, connected: bool) -> None:
    KAFKA_CONNECTED.labels(kafka=kafka).set(1 if connected else 0)
    previous = _KAFKA_STATE.get(kafka)
    if previous is None or previous[0] != connected:
        _KAFKA_STATE[kafka] = (connected, time.time())


def kafka_connections() -> dict[str, tuple[bool, float]]:
    return dict(_KAFKA_STATE)


_PER_PEER = (
    EXPORTED_SERVICES,
    EXPORTED_INSTANCES,
    IMPORTED_SERVICES,
    IMPORTED_INSTANCES,
    LAST_HEARTBEAT,
    LAST_RECEIVED,
    LAST_SENT,
    CONSUMER_LAG,
    KEY_ROTATIONS,
    PROPAGATION_DELAY,
)


def set_peering_state(peer: str, state: str) -> None:
    for candidate in PEERING_STATES:
        PEERING_STATE.labels(peer=peer, state=candidate).set(1 if candidate == state else 0)


def set_peering_info(peer: str, peering_id: str, role: str) -> None:
    PEERING_INFO.labels(peer=peer, peering_id=peering_id, role=role).set(1)


def forget_peering(peer: str) -> None:
    """Drop a deleted peering's series, so dashboards do not show ghosts."""
    for candidate in PEERING_STATES:
        _remove(PEERING_STATE, peer, candidate)
    for metric in _PER_PEER:
        _remove(metric, peer)
    for event_type in _EVENT_TYPES:
        _remove(EVENTS_PUBLISHED, peer, event_type)
        _remove(EVENTS_APPLIED, peer, event_type)
    for labels in list(RECORDS_REJECTED._metrics) + list(RESYNCS._metrics):
        if labels[0] == peer:
            _remove(RECORDS_REJECTED, *labels)
            _remove(RESYNCS, *labels)
    for labels in list(PEERING_INFO._metrics):  # prometheus-client has no remove-by-prefix
        if labels[0] == peer:
            PEERING_INFO.remove(*labels)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set for this peer
        metric.remove(*labels)


_EVENT_TYPES = (
    "instance_upsert",
    "instance_remove",
    "heartbeat",
    "key_rotation",
    "stream_head",
    "terminated",
    "resync_request",
)
_RESYNC_REASONS = ("seq_gap", "offset_reset", "epoch_jump", "count_mismatch")


def init_peer(peer: str, peering_id: str, role: str) -> None:
    """Create a peering's series at zero, so rates and alerts work from the first scrape
    (a counter that appears only on its first increment hides that increment from rate())."""
    from agent.wire.reasons import RejectReason  # the closed set of reject labels

    set_peering_info(peer, peering_id, role)
    for event_type in _EVENT_TYPES:
        EVENTS_PUBLISHED.labels(peer=peer, type=event_type)
        EVENTS_APPLIED.labels(peer=peer, type=event_type)
    for reason in RejectReason:
        RECORDS_REJECTED.labels(peer=peer, reason=reason.value)
    for resync in _RESYNC_REASONS:
        RESYNCS.labels(peer=peer, reason=resync)
    KEY_ROTATIONS.labels(peer=peer)
    PROPAGATION_DELAY.labels(peer=peer)
    CONSUMER_LAG.labels(peer=peer)
    for gauge in (EXPORTED_SERVICES, EXPORTED_INSTANCES, IMPORTED_SERVICES, IMPORTED_INSTANCES):
        gauge.labels(peer=peer)
