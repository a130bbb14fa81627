"""Stream key schedule: from the handshake's shared secrets to per-direction, per-epoch keys.

Derivation (all HKDF-SHA256, info prefixed with the protocol label, see agent.crypto)::

    root           = HKDF(ikm=frame(DH(acceptor_static, dialer_static),
                                    DH(dialer_ephemeral, acceptor_static)),
                          salt=establishment_key, info=frame("stream root", peering_id))
    key_hash_key   = HKDF(root, info=frame("record key hash", peering_id, direction))
    epoch_secret_1 = HKDF(root, info=frame("epoch secret", peering_id, direction, 1))
    epoch_secret_n = HKDF(ikm=DH(rotation_ephemeral, importer_static),
                          salt=epoch_secret_{n-1},
                          info=frame("epoch secret", peering_id, direction, n))
    aead_key_n     = HKDF(epoch_secret_n, info=frame("record aead", peering_id, direction, n))

The key-hash key does not change with the epoch, so a record key stays the same across
rotations and compaction keeps working. A rotation mixes in a fresh DH with the importer's
static key, so someone who stole an old epoch's symmetric keys cannot follow the rotation.
"""

from __future__ import annotations

import enum
import functools

import msgspec

from agent import crypto
from agent.wire.errors import ProtocolBug

RECORD_KEY_BYTES = 16
STREAM_TAG_BYTES = 8
FIRST_EPOCH = 1


class Direction(enum.StrEnum):
    """Which way a stream flows. Each peering has exactly two streams."""

    ACCEPTOR_TO_DIALER = "acceptor-to-dialer"
    DIALER_TO_ACCEPTOR = "dialer-to-acceptor"


class StreamKeyring(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The secrets of one stream, as both its exporter and its importer persist them.

    ``EpochSecrets`` holds every epoch that records may still be encrypted with; older epochs
    are retired once the exporter republished its full view under a newer one.
    """

    PeeringID: str
    StreamDirection: Direction
    KeyHashKey: bytes
    EpochSecrets: dict[int, bytes]
    CurrentEpoch: int = FIRST_EPOCH


def _info(label: bytes, peering_id: str, direction: Direction, *extra: bytes) -> bytes:
    return crypto.frame(label, peering_id.encode(), direction.value.encode(), *extra)


def stream_root(
    *,
    static_static_dh: bytes,
    ephemeral_static_dh: bytes,
    establishment_key: bytes,
    peering_id: str,
) -> bytes:
    """The peering's root secret, which both sides compute after an accepted handshake."""
    return crypto.hkdf(
        crypto.frame(static_static_dh, ephemeral_static_dh),
        salt=establishment_key,
        info=crypto.frame(b"stream root", peering_id.encode()),
    )


def new_keyring(root: bytes, peering_id: str, direction: Direction) -> StreamKeyring:
    """The keyring of one direction at epoch 1."""
    key_hash_key = crypto.hkdf(
        root, salt=b"", info=_info(b"record key hash", peering_id, direction)
    )
    first = crypto.hkdf(
        root, salt=b"", info=_info(b"epoch secret", peering_id, direction, b"%d" % FIRST_EPOCH)
    )
    return StreamKeyring(
        PeeringID=peering_id,
        StreamDirection=direction,
        KeyHashKey=key_hash_key,
        EpochSecrets={FIRST_EPOCH: first},
    )


def stream_tag(keyring: StreamKeyring) -> bytes:
    """A short public label of the stream, so a record copied from another peering or
    direction is recognised (WRONG_STREAM) before any decryption is attempted."""
    return _derive_stream_tag(keyring.KeyHashKey)


def record_key(keyring: StreamKeyring, logical_key: str) -> bytes:
    """Kafka record key: a keyed hash of the logical key, stable across epochs."""
    return crypto.mac(keyring.KeyHashKey, logical_key.encode())[:RECORD_KEY_BYTES]


def aead_key(keyring: StreamKeyring, epoch: int) -> bytes | None:
    """The record encryption key of ``epoch``, or None when the epoch is unknown or retired."""
    secret = keyring.EpochSecrets.get(epoch)
    if secret is None:
        return None
    return _derive_aead_key(secret, keyring.PeeringID, keyring.StreamDirection, epoch)


# Pure functions of their (hashable) inputs, called for every record: cache the derivations.
@functools.lru_cache(maxsize=256)
def _derive_aead_key(secret: bytes, peering_id: str, direction: Direction, epoch: int) -> bytes:
    info = _info(b"record aead", peering_id, direction, b"%d" % epoch)
    return crypto.hkdf(secret, salt=b"", info=info)


@functools.lru_cache(maxsize=256)
def _derive_stream_tag(key_hash_key: bytes) -> bytes:
    return crypto.mac(key_hash_key, b"stream tag")[:STREAM_TAG_BYTES]


def _next_secret(keyring: StreamKeyring, new_epoch: int, rotation_dh: bytes) -> bytes:
    previous = keyring.EpochSecrets.get(new_epoch - 1)
    if previous is None:
        raise ProtocolBug(f"cannot derive epoch {new_epoch}: epoch {new_epoch - 1} is unknown")
    info = _info(b"epoch secret", keyring.PeeringID, keyring.StreamDirection, b"%d" % new_epoch)
    return crypto.hkdf(rotation_dh, salt=previous, info=info)


def begin_rotation(
    keyring: StreamKeyring,
    importer_static_public: bytes,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> tuple[StreamKeyring, bytes]:
    """Exporter side: make epoch ``CurrentEpoch + 1``; returns the new keyring and the
    rotation public key to send (inside a KeyRotation event encrypted under the old epoch)."""
    ephemeral = crypto.generate_private_key(random_bytes)
    new_epoch = keyring.CurrentEpoch + 1
    secret = _next_secret(
        keyring, new_epoch, crypto.diffie_hellman(ephemeral, importer_static_public)
    )
    rotated = msgspec.structs.replace(
        keyring, EpochSecrets={**keyring.EpochSecrets, new_epoch: secret}, CurrentEpoch=new_epoch
    )
    return rotated, crypto.public_key(ephemeral)


def accept_rotation(
    keyring: StreamKeyring,
    new_epoch: int,
    rotation_public_key: bytes,
    importer_static_private: bytes,
) -> StreamKeyring:
    """Importer side: learn epoch ``new_epoch`` from a KeyRotation event. Idempotent, so
    replaying a topic that contains the rotation again changes nothing."""
    if new_epoch in keyring.EpochSecrets:
        return keyring
    if new_epoch - 1 not in keyring.EpochSecrets:
        # The previous epoch was retired or never seen: a peer fault (or a forged epoch
        # number that still decrypted, which cannot happen); the importer must resync.
        return keyring
    secret = _next_secret(
        keyring, new_epoch, crypto.diffie_hellman(importer_static_private, rotation_public_key)
    )
    return msgspec.structs.replace(
        keyring,
        EpochSecrets={**keyring.EpochSecrets, new_epoch: secret},
        CurrentEpoch=max(keyring.CurrentEpoch, new_epoch),
    )


def retire_epochs(keyring: StreamKeyring, below: int) -> StreamKeyring:
    """Forget every epoch older than ``below`` (never the current one)."""
    below = min(below, keyring.CurrentEpoch)
    kept = {epoch: s for epoch, s in keyring.EpochSecrets.items() if epoch >= below}
    return msgspec.structs.replace(keyring, EpochSecrets=kept)
