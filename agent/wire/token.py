"""Peering tokens: the one string a user copies from the acceptor to the dialer.

Text form: ``pat1.<base64url(JSON of PeeringToken)>.<base64url(checksum)>``. The checksum
(8 bytes of SHA-256 over the JSON) catches truncated or hand-edited tokens with a clear
"malformed" instead of a confusing refusal later; it is not a signature — the token is a
bearer secret and its authenticity is decided by the acceptor (see handshake.py).

The acceptor never stores the secret: its ``TokenRecord`` keeps ``EstablishmentKey``, a
one-way HKDF derivation of it, which is all the handshake needs.
"""

from __future__ import annotations

import enum
import hashlib

import msgspec

from agent import crypto
from agent.wire.errors import TokenExpired, TokenMalformed, TokenVersionUnsupported

TOKEN_PREFIX = "pat1."
TOKEN_VERSION = 1
SECRET_BYTES = 32
CHECKSUM_BYTES = 8
DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600.0
# Tokens are pasted by people; anything much larger than a real token is not one.
MAX_TOKEN_CHARS = 8192


class PeeringToken(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """What a token carries (promise 1)."""

    Version: int = TOKEN_VERSION
    TokenID: str
    PeeringID: str
    # The name the acceptor gave the dialer; the dialer's cluster name must match it.
    PeerName: str
    AcceptorName: str
    BootstrapServers: tuple[str, ...]
    BootstrapTopic: str
    # Raw X25519 public key of the acceptor's static key for this peering.
    AcceptorPublicKey: bytes
    Secret: bytes
    ExpiresAt: float


class TokenStatus(enum.StrEnum):
    """Life of a token on the acceptor."""

    ISSUED = "issued"
    USED = "used"
    REVOKED = "revoked"


class TokenRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """The acceptor's stored view of a token it issued (never the secret itself)."""

    TokenID: str
    PeeringID: str
    PeerName: str
    EstablishmentKey: bytes
    ExpiresAt: float
    Status: TokenStatus = TokenStatus.ISSUED
    # The request nonce that used the token: a retransmission of that same request is
    # answered "accepted" again instead of "reused".
    UsedByNonce: bytes = b""


class IssuedToken(msgspec.Struct, frozen=True):
    """Result of ``issue_token``: the text for the user and the record for the acceptor."""

    text: str
    token: PeeringToken
    record: TokenRecord


class _VersionProbe(msgspec.Struct, forbid_unknown_fields=False):
    Version: int


_ENCODER = msgspec.json.Encoder()
_TOKEN_DECODER = msgspec.json.Decoder(PeeringToken)
_PROBE_DECODER = msgspec.json.Decoder(_VersionProbe)


def establishment_key(secret: bytes) -> bytes:
    """One-way derivation of the token secret that the acceptor stores instead of it."""
    return crypto.hkdf(secret, salt=b"", info=b"establishment key")


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()[:CHECKSUM_BYTES]


def encode_token(token: PeeringToken) -> str:
    """The token's text form."""
    payload = _ENCODER.encode(token)
    return f"{TOKEN_PREFIX}{crypto.b64encode(payload)}.{crypto.b64encode(_checksum(payload))}"


def issue_token(
    *,
    peer_name: str,
    acceptor_name: str,
    peering_id: str,
    bootstrap_servers: tuple[str, ...],
    bootstrap_topic: str,
    acceptor_public_key: bytes,
    now: float,
    ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> IssuedToken:
    """Create a token; the caller stores ``record`` and revokes the peer's previous token."""
    secret = random_bytes(SECRET_BYTES)
    token = PeeringToken(
        TokenID=crypto.b64encode(random_bytes(16)),
        PeeringID=peering_id,
        PeerName=peer_name,
        AcceptorName=acceptor_name,
        BootstrapServers=bootstrap_servers,
        BootstrapTopic=bootstrap_topic,
        AcceptorPublicKey=acceptor_public_key,
        Secret=secret,
        ExpiresAt=now + ttl_seconds,
    )
    record = TokenRecord(
        TokenID=token.TokenID,
        PeeringID=peering_id,
        PeerName=peer_name,
        EstablishmentKey=establishment_key(secret),
        ExpiresAt=token.ExpiresAt,
    )
    return IssuedToken(text=encode_token(token), token=token, record=record)


def decode_token(text: str, now: float) -> PeeringToken:
    """Parse and check a token's text: raises TokenMalformed, TokenVersionUnsupported or
    TokenExpired. Used, revoked and wrong-name tokens are the acceptor's call."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenMalformed(f"a peering token is shorter than {MAX_TOKEN_CHARS} characters")
    if not text.startswith(TOKEN_PREFIX):
        if text.startswith("pat") and "." in text:
            raise TokenVersionUnsupported(
                f"token prefix {text.split('.', 1)[0]!r} is not {TOKEN_PREFIX!r}; upgrade the agent"
            )
        raise TokenMalformed(f"a peering token starts with {TOKEN_PREFIX!r}")
    parts = text[len(TOKEN_PREFIX) :].split(".")
    if len(parts) != 2:
        raise TokenMalformed("a peering token has exactly two dot-separated parts after 'pat1.'")
    try:
        payload, checksum = crypto.b64decode(parts[0]), crypto.b64decode(parts[1])
    except ValueError as exc:
        raise TokenMalformed(f"peering token is not base64url: {exc}") from exc
    if not crypto.constant_time_equal(checksum, _checksum(payload)):
        raise TokenMalformed("peering token checksum mismatch: it was truncated or altered")
    try:
        version = _PROBE_DECODER.decode(payload).Version
    except msgspec.DecodeError as exc:
        raise TokenMalformed(f"peering token content is invalid: {exc}") from exc
    if version != TOKEN_VERSION:
        raise TokenVersionUnsupported(f"token version {version} is not supported (need 1)")
    try:
        token = _TOKEN_DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise TokenMalformed(f"peering token content is invalid: {exc}") from exc
    if len(token.AcceptorPublicKey) != crypto.KEY_BYTES or len(token.Secret) != SECRET_BYTES:
        raise TokenMalformed("peering token carries a key or secret of the wrong length")
    if not token.BootstrapServers or not token.BootstrapTopic:
        raise TokenMalformed("peering token names no Kafka bootstrap servers or topic")
    if now >= token.ExpiresAt:
        raise TokenExpired(f"peering token expired {now - token.ExpiresAt:.0f} s ago")
    return token


def revoke(record: TokenRecord) -> TokenRecord:
    """The record after a newer token was generated for the same peer."""
    return msgspec.structs.replace(record, Status=TokenStatus.REVOKED)


def mark_used(record: TokenRecord, request_nonce: bytes) -> TokenRecord:
    """The record after the acceptor accepted an establish request with it."""
    return msgspec.structs.replace(record, Status=TokenStatus.USED, UsedByNonce=request_nonce)
