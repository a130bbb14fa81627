"""Peering operations, as the HTTP API and the CLI see them (no HTTP here).

Each operation validates its input, drives the tracker and answers with plain values or a
PeeringError carrying the HTTP status and a one-line message for the user.
"""

from __future__ import annotations

import uuid

import msgspec

from agent import crypto, metrics, names, topics
from agent.kafka_client import KafkaSettings
from agent.peering.context import PeeringContext
from agent.peering.handshake_io import EstablishError, establish
from agent.peering.records import STREAMING, PeeringRecord
from agent.peering_state import (
    Action,
    DeleteRequested,
    PeeringState,
    new_acceptor_peering,
)
from agent.wire.errors import TokenError
from agent.wire.token import decode_token, issue_token, revoke


class PeeringError(Exception):
    """A refused peering request: HTTP ``status`` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PeeringService:
    def __init__(
        self,
        ctx: PeeringContext,
        *,
        advertise_kafka: tuple[str, ...],
        dial_kafka: dict[str, KafkaSettings],
        token_ttl: float,
        establish_timeout: float,
        delete_grace: float,
    ) -> None:
        self.ctx = ctx
        self.advertise_kafka = advertise_kafka
        self.dial_kafka = dial_kafka
        self.token_ttl = token_ttl
        self.establish_timeout = establish_timeout
        self.delete_grace = delete_grace

    def _name(self, value: object) -> str:
        try:
            return names.validate_peer_name(value)
        except names.InvalidName as error:
            raise PeeringError(400, str(error)) from None

    def generate_token(self, peer_name: object, meta: dict[str, str]) -> str:
        """Acceptor: a PENDING peering and its one-time token; revokes an earlier token."""
        name = self._name(peer_name)
        tracker, now = self.ctx.tracker, self.ctx.clock()
        existing = tracker.get(name)
        if existing is not None and existing.state is not PeeringState.PENDING:
            raise PeeringError(
                409,
                f"peering {name!r} is {existing.state.value}: delete it before generating "
                "a new token",
            )
        if existing is None:
            private_key = crypto.generate_private_key()
            record = PeeringRecord(
                Name=name,
                ID=str(uuid.uuid4()),
                Status=new_acceptor_peering(
                    name, now, self.ctx.heartbeat_interval, self.delete_grace
                ),
                CreatedAt=now,
                Kafka=self.ctx.home_kafka,
                BootstrapTopic=topics.bootstrap_topic(self.ctx.local_cluster),
                PrivateKey=private_key,
                Meta=meta,
            )
        else:
            record = msgspec.structs.replace(existing, Meta=meta or existing.Meta)
        issued = issue_token(
            peer_name=name,
            acceptor_name=self.ctx.local_cluster,
            peering_id=record.ID,
            bootstrap_servers=self.advertise_kafka,
            bootstrap_topic=record.BootstrapTopic,
            acceptor_public_key=crypto.public_key(record.PrivateKey),
            now=now,
            ttl_seconds=self.token_ttl,
        )
        revoked = record.RevokedTokens
        if record.Token is not None:
            revoked = (*revoked[-15:], revoke(record.Token))
        tracker.put(msgspec.structs.replace(record, Token=issued.record, RevokedTokens=revoked))
        metrics.TOKENS_GENERATED.inc()
        return issued.text

    async def establish(self, peer_name: object, token_text: object, meta: dict[str, str]) -> None:
        """Dialer: returns once the acceptor accepted; PeeringError otherwise."""
        name = self._name(peer_name)
        if not isinstance(token_text, str) or not token_text.strip():
            raise PeeringError(400, "PeeringToken is required: paste the token from the acceptor")
        try:
            token = decode_token(token_text, self.ctx.clock())
        except TokenError as error:
            metrics.HANDSHAKES.labels(role="dialer", result=error.reason.value).inc()
            raise PeeringError(400, f"invalid peering token: {error}") from None
        existing = self.ctx.tracker.get(name)
        if existing is not None:
            raise PeeringError(
                409, f"a peering named {name!r} already exists ({existing.state.value})"
            )
        if self.ctx.tracker.by_id(token.PeeringID) is not None:
            raise PeeringError(409, "this token belongs to a peering this agent already has")
        kafka = self._kafka_for(token.BootstrapServers)
        try:
            await establish(
                self.ctx.tracker,
                local_cluster=self.ctx.local_cluster,
                peer_name=name,
                token=token,
                kafka=kafka,
                meta=meta,
                heartbeat_interval=self.ctx.heartbeat_interval,
                delete_grace=self.delete_grace,
                answer_timeout=self.establish_timeout,
            )
        except EstablishError as error:
            raise PeeringError(error.status, str(error)) from None

    def _kafka_for(self, bootstrap: tuple[str, ...]) -> KafkaSettings:
        """Security settings configured for the acceptor's Kafka, else plaintext."""
        for server in bootstrap:
            if server in self.dial_kafka:
                return msgspec.structs.replace(self.dial_kafka[server], bootstrap=bootstrap)
        if set(bootstrap) & set(self.ctx.home_kafka.bootstrap):
            return msgspec.structs.replace(self.ctx.home_kafka, bootstrap=bootstrap)
        return KafkaSettings(bootstrap=bootstrap)

    def delete(self, peer_name: object) -> None:
        """Either side: tell the peer, drop imports, remove topics after the grace."""
        name = self._name(peer_name)
        tracker = self.ctx.tracker
        if tracker.get(name) is None:
            raise PeeringError(404, f"no peering named {name!r}")
        actions = tracker.feed(name, DeleteRequested(self.ctx.clock()))
        if Action.FORGET_PEERING in actions:
            tracker.forget(name)

    def rotate_keys(self, peer_name: object) -> None:
        name = self._name(peer_name)
        record = self.ctx.tracker.get(name)
        if record is None:
            raise PeeringError(404, f"no peering named {name!r}")
        if record.state not in STREAMING:
            raise PeeringError(409, f"peering {name!r} is {record.state.value}, not ACTIVE")
        self.ctx.signals_for(name).request_rotation()

    def get(self, peer_name: object) -> PeeringRecord:
        name = self._name(peer_name)
        record = self.ctx.tracker.get(name)
        if record is None:
            raise PeeringError(404, f"no peering named {name!r}")
        return record

    def all(self) -> list[PeeringRecord]:
        return self.ctx.tracker.all()
