"""Cryptographic primitives of the peering protocol, all from ``cryptography``.

One small vocabulary used by the token, handshake and stream codecs: X25519 key agreement,
HKDF-SHA256, ChaCha20-Poly1305 AEAD, HMAC-SHA256 and unpadded base64url. Keys travel and are
stored as raw bytes so that they fit msgspec Structs and SQLite columns without PEM.
Randomness is injectable (``random_bytes``) so tests can be deterministic; production code
uses the default, ``os.urandom``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.wire.errors import BadPublicKey, DecryptionFailed

RandomBytes = Callable[[int], bytes]

KEY_BYTES = 32
NONCE_BYTES = 12
# Every derivation's info starts with this label, so keys of this protocol version can never
# collide with keys derived by another protocol (or another version) from the same secrets.
PROTOCOL_LABEL = b"peering-agent/v1"


def system_random(length: int) -> bytes:
    """Cryptographically secure random bytes (the production ``RandomBytes``)."""
    return os.urandom(length)


def b64encode(data: bytes) -> str:
    """Unpadded base64url: safe in tokens, URLs and JSON."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of ``b64encode``; raises ValueError on anything that is not base64url."""
    if not text.isascii():
        raise ValueError("base64url text must be ASCII")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from exc


def frame(*parts: bytes) -> bytes:
    """Unambiguous concatenation (each part length-prefixed) for AAD, HKDF info and MACs.

    Without the prefixes ("ab", "c") and ("a", "bc") would authenticate the same bytes.
    """
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def generate_private_key(random_bytes: RandomBytes = system_random) -> bytes:
    """A new raw X25519 private key (32 bytes)."""
    return X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES)).private_bytes_raw()


def public_key(private_key: bytes) -> bytes:
    """The raw X25519 public key (32 bytes) of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def diffie_hellman(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519 shared secret; a malformed or low-order peer key is the peer's fault."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public_key)
        return X25519PrivateKey.from_private_bytes(private_key).exchange(peer)
    except ValueError as exc:
        raise BadPublicKey(f"unusable X25519 public key: {exc}") from exc


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 with the protocol label prepended to ``info``."""
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=salt, info=frame(PROTOCOL_LABEL, info)
    ).derive(ikm)


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256."""
    return hmac.new(key, data, hashlib.sha256).digest()


def constant_time_equal(left: bytes, right: bytes) -> bool:
    """Compare secrets without leaking where they differ through timing."""
    return hmac.compare_digest(left, right)


def seal(
    key: bytes, plaintext: bytes, aad: bytes, random_bytes: RandomBytes = system_random
) -> tuple[bytes, bytes]:
    """Encrypt and authenticate; returns (nonce, ciphertext). Nonces are random: 96 bits is
    ample for the number of records one epoch key protects before rotation."""
    nonce = random_bytes(NONCE_BYTES)
    return nonce, _cipher(key).encrypt(nonce, plaintext, aad)


# Setting up the cipher for a key cost as much as encrypting a whole record (~0.9 µs), once per
# record on both ends; a stream uses one key per epoch, as keys.py caches its derivation.
@functools.lru_cache(maxsize=256)
def _cipher(key: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(key)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt and verify; any mismatch (key, nonce, AAD, bytes) is ``DecryptionFailed``."""
    if len(nonce) != NONCE_BYTES:
        raise DecryptionFailed(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    try:
        return _cipher(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise DecryptionFailed("authentication failed") from exc
