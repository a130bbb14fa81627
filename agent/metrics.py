"""Every Prometheus metric object of the agent, in one place.

Metrics live in the default registry so the process/platform collectors come along for free.
Label values are bounded: HTTP routes are labelled with their template
(``/v1/health/service/{name}``), never the raw path, so a scanner cannot blow up cardinality.
"""

from __future__ import annotations

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
