"""What a peering is, as the agent persists it (one JSON document per peering).

The record holds secrets (this side's static private key and the stream keyrings); it lives
only in the agent's data dir, which the agent creates with mode 0700.
"""

from __future__ import annotations

import msgspec

from agent import topics
from agent.kafka_client import KafkaSettings
from agent.peering_state import PeeringState, PeeringStatus, Role
from agent.wire.keys import Direction, StreamKeyring
from agent.wire.token import TokenRecord

# States in which both streams run.
STREAMING = frozenset({PeeringState.ACTIVE, PeeringState.FAILING})


class PeeringRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One peering, on one side. ``Name`` is the local alias of the remote cluster."""

    Name: str
    ID: str
    Status: PeeringStatus
    CreatedAt: float
    # Where the peering's topics live: the acceptor's Kafka (the dialer got it from the token).
    Kafka: KafkaSettings
    BootstrapTopic: str
    # This side's static X25519 key for this peering, and the other side's public key.
    PrivateKey: bytes
    PeerPublicKey: bytes = b""
    # The remote cluster's own name, learnt in the handshake.
    PeerCluster: str = ""
    Meta: dict[str, str] = msgspec.field(default_factory=dict)
    ExportKeyring: StreamKeyring | None = None
    ImportKeyring: StreamKeyring | None = None
    # Acceptor only: the newest token issued for this peer (never its secret).
    Token: TokenRecord | None = None
    # Tokens replaced by a newer one, kept so that their use is refused as "revoked" rather
    # than "unknown" (the last few only).
    RevokedTokens: tuple[TokenRecord, ...] = ()
    CreateIndex: int = 0
    ModifyIndex: int = 0

    @property
    def role(self) -> Role:
        return self.Status.PeerRole

    @property
    def state(self) -> PeeringState:
        return self.Status.State

    @property
    def export_direction(self) -> Direction:
        if self.role is Role.ACCEPTOR:
            return Direction.ACCEPTOR_TO_DIALER
        return Direction.DIALER_TO_ACCEPTOR

    @property
    def import_direction(self) -> Direction:
        if self.role is Role.ACCEPTOR:
            return Direction.DIALER_TO_ACCEPTOR
        return Direction.ACCEPTOR_TO_DIALER

    @property
    def export_topic(self) -> str:
        return topics.stream_topic(self.ID, self.export_direction)

    @property
    def import_topic(self) -> str:
        return topics.stream_topic(self.ID, self.import_direction)


def token_record(record: PeeringRecord, token_id: str) -> TokenRecord | None:
    """The current or a revoked token of this peering with that id."""
    for candidate in (record.Token, *record.RevokedTokens):
        if candidate is not None and candidate.TokenID == token_id:
            return candidate
    return None


def with_status(record: PeeringRecord, status: PeeringStatus) -> PeeringRecord:
    return msgspec.structs.replace(record, Status=status)
