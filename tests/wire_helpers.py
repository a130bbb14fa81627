"""Shared, deterministic fixtures for the protocol-core tests (no I/O)."""

from __future__ import annotations

import random

from agent import crypto
from agent.wire import handshake, keys
from agent.wire.token import IssuedToken, issue_token

NOW = 1_700_000_000.0
PEERING_ID = "0b6a6c3e-peering-ab"


def seeded_random(seed: int) -> crypto.RandomBytes:
    """A deterministic RandomBytes, so keys and nonces repeat from run to run."""
    rng = random.Random(seed)
    return rng.randbytes


def issue(seed: int = 1, *, peer_name: str = "beta", now: float = NOW) -> tuple[IssuedToken, bytes]:
    """A token for peer ``peer_name`` and the acceptor's static private key."""
    rnd = seeded_random(seed)
    acceptor_private = crypto.generate_private_key(rnd)
    issued = issue_token(
        peer_name=peer_name,
        acceptor_name="alpha",
        peering_id=PEERING_ID,
        bootstrap_servers=("kafka-a:9092",),
        bootstrap_topic="peering.bootstrap",
        acceptor_public_key=crypto.public_key(acceptor_private),
        now=now,
        ttl_seconds=3600,
        random_bytes=rnd,
    )
    return issued, acceptor_private


class Established:
    """Both sides of an accepted handshake, with their keyrings for both directions."""

    def __init__(self, seed: int = 1, peering_id: str = PEERING_ID) -> None:
        rnd = seeded_random(seed)
        self.acceptor_private = crypto.generate_private_key(rnd)
        self.dialer_private = crypto.generate_private_key(rnd)
        root = crypto.hkdf(rnd(32), salt=b"", info=b"test root")
        self.root = root
        self.a2d = keys.new_keyring(root, peering_id, keys.Direction.ACCEPTOR_TO_DIALER)
        self.d2a = keys.new_keyring(root, peering_id, keys.Direction.DIALER_TO_ACCEPTOR)


def handshake_roundtrip(
    seed: int = 1,
) -> tuple[IssuedToken, bytes, handshake.SealedRequest, handshake.DialerPending]:
    """A token and a sealed request from dialer 'beta' for it."""
    issued, acceptor_private = issue(seed)
    sealed, pending = handshake.seal_request(
        issued.token,
        dialer_name="beta",
        dialer_private_key=crypto.generate_private_key(seeded_random(seed + 100)),
        now=NOW + 10,
        random_bytes=seeded_random(seed + 200),
    )
    return issued, acceptor_private, sealed, pending
