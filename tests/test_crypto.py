"""Crypto primitives and the stream key schedule."""

from __future__ import annotations

import pytest

from agent import crypto
from agent.wire import keys
from agent.wire.errors import BadPublicKey, DecryptionFailed
from tests.wire_helpers import Established, seeded_random


def test_b64_roundtrip_is_unpadded_url_safe() -> None:
    """base64url encoding has no padding or '+/' and decodes back exactly."""
    data = bytes(range(256))
    text = crypto.b64encode(data)
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert crypto.b64decode(text) == data


def test_b64decode_rejects_garbage() -> None:
    """Non-base64 text raises ValueError, never binascii.Error."""
    with pytest.raises(ValueError, match="base64"):
        crypto.b64decode("a")
    with pytest.raises(ValueError, match="ASCII"):
        crypto.b64decode("é")


def test_frame_is_unambiguous() -> None:
    """Framing distinguishes ('ab','c') from ('a','bc')."""
    assert crypto.frame(b"ab", b"c") != crypto.frame(b"a", b"bc")


def test_diffie_hellman_agrees_on_both_sides() -> None:
    """X25519 gives both parties the same shared secret."""
    rnd = seeded_random(3)
    a, b = crypto.generate_private_key(rnd), crypto.generate_private_key(rnd)
    shared = crypto.diffie_hellman(a, crypto.public_key(b))
    assert shared == crypto.diffie_hellman(b, crypto.public_key(a))


def test_diffie_hellman_rejects_bad_public_keys() -> None:
    """A short or low-order public key is a BadPublicKey (peer fault)."""
    private = crypto.generate_private_key(seeded_random(4))
    with pytest.raises(BadPublicKey):
        crypto.diffie_hellman(private, b"short")
    with pytest.raises(BadPublicKey):
        crypto.diffie_hellman(private, bytes(32))


def test_seal_open_roundtrip_and_aad_binding() -> None:
    """AEAD opens with the right key and AAD, and fails on any change."""
    key = bytes(32)
    nonce, ciphertext = crypto.seal(key, b"hello", b"aad", seeded_random(5))
    assert crypto.open_sealed(key, nonce, ciphertext, b"aad") == b"hello"
    with pytest.raises(DecryptionFailed):
        crypto.open_sealed(key, nonce, ciphertext, b"other aad")
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(DecryptionFailed):
        crypto.open_sealed(key, nonce, flipped, b"aad")
    with pytest.raises(DecryptionFailed):
        crypto.open_sealed(key, nonce[:5], ciphertext, b"aad")


def test_directions_and_peerings_get_distinct_keys() -> None:
    """Each direction and each peering has its own key-hash and record keys."""
    one, other = Established(seed=1), Established(seed=1, peering_id="another")
    a2d, d2a = one.a2d, one.d2a
    assert a2d.KeyHashKey != d2a.KeyHashKey
    assert keys.aead_key(a2d, 1) != keys.aead_key(d2a, 1)
    assert keys.aead_key(a2d, 1) != keys.aead_key(other.a2d, 1)
    assert keys.record_key(a2d, "instance/x") != keys.record_key(d2a, "instance/x")


def test_rotation_exporter_and_importer_derive_same_epoch_key() -> None:
    """begin_rotation and accept_rotation agree on the next epoch's key."""
    peers = Established()
    rotated, rotation_pub = keys.begin_rotation(
        peers.a2d, crypto.public_key(peers.dialer_private), seeded_random(6)
    )
    learned = keys.accept_rotation(peers.a2d, 2, rotation_pub, peers.dialer_private)
    assert rotated.CurrentEpoch == learned.CurrentEpoch == 2
    assert keys.aead_key(rotated, 2) == keys.aead_key(learned, 2)
    assert keys.aead_key(learned, 2) != keys.aead_key(learned, 1)
    # Record keys survive rotation, so compaction keeps working across epochs.
    assert keys.record_key(rotated, "instance/x") == keys.record_key(peers.a2d, "instance/x")


def test_accept_rotation_is_idempotent_and_retire_drops_old_epochs() -> None:
    """Learning a known epoch again changes nothing; retiring forgets older epochs only."""
    peers = Established()
    _, rotation_pub = keys.begin_rotation(
        peers.a2d, crypto.public_key(peers.dialer_private), seeded_random(7)
    )
    learned = keys.accept_rotation(peers.a2d, 2, rotation_pub, peers.dialer_private)
    assert keys.accept_rotation(learned, 2, rotation_pub, peers.dialer_private) == learned
    retired = keys.retire_epochs(learned, 2)
    assert keys.aead_key(retired, 1) is None
    assert keys.aead_key(retired, 2) is not None
    assert keys.retire_epochs(learned, 99).CurrentEpoch == 2
    assert keys.aead_key(keys.retire_epochs(learned, 99), 2) is not None
