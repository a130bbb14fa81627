"""Helpers for the peering acceptance and adversary tests: metrics, views, stream state."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from agent.model import ServiceInstance
from agent.peering.records import PeeringRecord
from agent.reducer import ImportState
from agent.store import DB_FILE
from agent.wire.events import instance_key
from agent.wire.keys import StreamKeyring
from tests.agent_fixtures import AgentProcess
from tests.faults.convergence import comparable
from tests.peering_helpers import FAST_ENV, peer, state

AgentFactory = Callable[..., AgentProcess]

INSTANCE_EVENTS = ("instance_upsert", "instance_remove")


def metric(agent: AgentProcess, family: str, **labels: str) -> float:
    """Sum of the samples of ``family`` (``_total`` for counters) matching ``labels``."""
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    total = 0.0
    for parsed in text_string_to_metric_families(text):
        for sample in parsed.samples:
            if sample.name != family:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def peered_pair(agent_factory: AgentFactory, kafka: str) -> tuple[AgentProcess, AgentProcess]:
    """Two agents on ``kafka``, east (acceptor) and west (dialer), peered and both ACTIVE,
    with the fast heartbeat settings of FAST_ENV."""
    east = agent_factory(name="east", kafka=kafka, env=FAST_ENV)
    west = agent_factory(name="west", kafka=kafka, env=FAST_ENV)
    peer(east, west)
    return east, west


def converged(exporter: AgentProcess, importer: AgentProcess, service: str) -> bool:
    """The importer sees exactly the exporter's (non-empty) view of ``service``."""
    want = view(exporter, service)
    return bool(want) and view(importer, service, exporter.name) == want


def metric_by(agent: AgentProcess, family: str, label: str, **labels: str) -> dict[str, float]:
    """Samples of ``family`` matching ``labels``, keyed by the value of ``label``."""
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for parsed in text_string_to_metric_families(text):
        for sample in parsed.samples:
            if sample.name != family or label not in sample.labels:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                out[sample.labels[label]] = out.get(sample.labels[label], 0.0) + sample.value
    return out


def view(agent: AgentProcess, service: str, peer_name: str | None = None) -> dict[str, Any]:
    """Instances of ``service`` (local, or imported from ``peer_name``) as comparable values:
    id -> (address, port, tags, meta, sorted check statuses)."""
    params = {"peer": peer_name} if peer_name else {}
    response = httpx.get(f"{agent.url}/v1/health/service/{service}", params=params, timeout=10)
    response.raise_for_status()
    return {entry["Service"]["ID"]: comparable(entry) for entry in response.json()}


def peering(agent: AgentProcess, peer_name: str) -> dict[str, Any]:
    response = httpx.get(f"{agent.url}/v1/peering/{peer_name}", timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def active(agent: AgentProcess, peer_name: str) -> bool:
    return state(agent, peer_name) == "ACTIVE"


def token_for(acceptor: AgentProcess, peer_name: str) -> str:
    response = httpx.post(
        f"{acceptor.url}/v1/peering/token", json={"PeerName": peer_name}, timeout=10
    )
    assert response.status_code == 200, response.text
    text: str = response.json()["PeeringToken"]
    return text


def establish(dialer: AgentProcess, peer_name: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{dialer.url}/v1/peering/establish",
        json={"PeerName": peer_name, "PeeringToken": token},
        timeout=40,
    )


class PersistedImport(msgspec.Struct, frozen=True):
    """What an importer committed for one peering, read from its (stopped) data dir."""

    record: PeeringRecord
    state: ImportState  # with the committed imported instances, keyed as on the wire
    keyring: StreamKeyring


def persisted_import(agent: AgentProcess, peer_name: str) -> PersistedImport:
    """The importer cursor an agent committed: read its SQLite file, as a restart would."""
    conn = sqlite3.connect(f"file:{agent.data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        body = conn.execute("SELECT body FROM peerings WHERE name = ?", (peer_name,)).fetchone()
        record = msgspec.json.decode(body[0], type=PeeringRecord)
        row = conn.execute(
            "SELECT state, keyring FROM import_cursor WHERE peering_id = ?", (record.ID,)
        ).fetchone()
        bodies = conn.execute("SELECT body FROM imported WHERE peer = ?", (peer_name,)).fetchall()
    finally:
        conn.close()
    assert row is not None, "the importer committed nothing yet"
    instances = [msgspec.json.decode(b[0], type=ServiceInstance) for b in bodies]
    committed = msgspec.json.decode(row[0], type=ImportState)
    return PersistedImport(
        record=record,
        state=msgspec.structs.replace(
            committed, Instances={instance_key(i.ID): i for i in instances}
        ),
        keyring=msgspec.json.decode(row[1], type=StreamKeyring),
    )
