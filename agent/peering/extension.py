"""Plugs peering into the agent: HTTP routes and the supervisor task (runtime.Extension)."""

from __future__ import annotations

import time

from agent.config import AgentConfig
from agent.kafka_client import KafkaSettings
from agent.notifier import IndexNotifier
from agent.peering.api import PeeringApi
from agent.peering.context import PeeringContext
from agent.peering.service import PeeringService
from agent.peering.supervisor import supervise
from agent.peering.tracker import PeeringTracker
from agent.runtime import Extension
from agent.store import Store


def peering_extension(store: Store, notifier: IndexNotifier, config: AgentConfig) -> Extension:
    home = KafkaSettings.secured(config.kafka, config.kafka_security)
    ctx = PeeringContext(
        store=store,
        notifier=notifier,
        tracker=PeeringTracker(store, time.time),
        clock=time.time,
        local_cluster=config.name,
        home_kafka=home,
        heartbeat_interval=config.heartbeat_interval,
    )
    dial_kafka = {
        server: cluster for cluster in config.kafka_clusters for server in cluster.bootstrap
    }
    service = PeeringService(
        ctx,
        advertise_kafka=config.advertise_kafka or config.kafka,
        dial_kafka=dial_kafka,
        token_ttl=config.token_ttl,
        establish_timeout=config.establish_timeout,
        delete_grace=config.delete_grace,
    )
    api = PeeringApi(service, store, config.max_body_bytes)

    async def run_peering() -> None:
        await supervise(ctx)

    return Extension(routes=api.routes(), tasks=[("peering", run_peering)])
