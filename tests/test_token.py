"""Peering tokens: encoding, decoding and every way a token can be bad."""

from __future__ import annotations

import msgspec
import pytest

from agent import crypto
from agent.wire.errors import TokenExpired, TokenMalformed, TokenVersionUnsupported
from agent.wire.reasons import RefusalReason
from agent.wire.token import (
    TOKEN_PREFIX,
    TokenStatus,
    decode_token,
    encode_token,
    establishment_key,
    mark_used,
    revoke,
)
from tests.wire_helpers import NOW, issue


def _reencode(payload: bytes) -> str:
    """A token text with a valid checksum around arbitrary JSON (a deliberate forgery)."""
    import hashlib

    digest = hashlib.sha256(payload).digest()[:8]
    return f"{TOKEN_PREFIX}{crypto.b64encode(payload)}.{crypto.b64encode(digest)}"


def test_token_roundtrip() -> None:
    """A freshly issued token decodes to the same values."""
    issued, _ = issue()
    assert issued.text.startswith("pat1.")
    assert decode_token(issued.text, NOW) == issued.token
    assert decode_token(f"  {issued.text}\n", NOW) == issued.token


def test_record_stores_no_secret() -> None:
    """The acceptor's record holds a one-way derivation, never the secret itself."""
    issued, _ = issue()
    record_bytes = msgspec.json.encode(issued.record)
    assert issued.token.Secret not in record_bytes
    assert crypto.b64encode(issued.token.Secret).encode() not in record_bytes
    assert issued.record.EstablishmentKey == establishment_key(issued.token.Secret)


def test_token_carries_what_promise_1_lists() -> None:
    """Token has acceptor name, peering id, servers, topic, public key, secret and expiry."""
    token, _ = issue()
    t = token.token
    assert t.AcceptorName == "alpha"
    assert t.PeerName == "beta"
    assert t.BootstrapServers == ("kafka-a:9092",)
    assert t.BootstrapTopic
    assert len(t.AcceptorPublicKey) == 32
    assert len(t.Secret) == 32
    assert t.ExpiresAt == NOW + 3600


def test_expired_token_is_refused() -> None:
    """A token past ExpiresAt raises TokenExpired with reason EXPIRED."""
    issued, _ = issue()
    with pytest.raises(TokenExpired, match="expired") as info:
        decode_token(issued.text, NOW + 3600)
    assert info.value.reason is RefusalReason.EXPIRED


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-10],  # truncated
        lambda t: t[:20] + ("A" if t[20] != "A" else "B") + t[21:],  # one character changed
        lambda t: t.replace("pat1.", "xyz."),  # wrong prefix
        lambda t: t + ".extra",  # extra part
        lambda t: "",  # empty
        lambda t: "pat1.!!!.###",  # not base64
        lambda t: t * 20,  # oversized paste
    ],
    ids=["truncated", "bitflip", "prefix", "extra-part", "empty", "not-base64", "oversized"],
)
def test_tampered_or_mangled_token_is_malformed(mangle: object) -> None:
    """Truncated, altered or garbage tokens raise TokenMalformed with a clear message."""
    issued, _ = issue()
    assert callable(mangle)
    with pytest.raises(TokenMalformed) as info:
        decode_token(mangle(issued.text), NOW)
    assert info.value.reason is RefusalReason.MALFORMED


def test_token_with_wrong_field_types_is_malformed() -> None:
    """Valid checksum around JSON that is not a token is still TokenMalformed."""
    with pytest.raises(TokenMalformed):
        decode_token(_reencode(b'{"Version": 1, "PeeringID": 5}'), NOW)
    with pytest.raises(TokenMalformed):
        decode_token(_reencode(b"[1,2,3]"), NOW)


def test_token_with_short_key_is_malformed() -> None:
    """A token whose public key is not 32 bytes is TokenMalformed."""
    issued, _ = issue()
    bad = msgspec.structs.replace(issued.token, AcceptorPublicKey=b"short")
    with pytest.raises(TokenMalformed, match="wrong length"):
        decode_token(encode_token(bad), NOW)


def test_unknown_version_is_refused() -> None:
    """A newer token version (field or prefix) raises TokenVersionUnsupported."""
    issued, _ = issue()
    newer = msgspec.structs.replace(issued.token, Version=2)
    with pytest.raises(TokenVersionUnsupported) as info:
        decode_token(encode_token(newer), NOW)
    assert info.value.reason is RefusalReason.UNSUPPORTED_VERSION
    with pytest.raises(TokenVersionUnsupported):
        decode_token(issued.text.replace("pat1.", "pat2.", 1), NOW)


def test_unknown_token_fields_are_ignored() -> None:
    """A token from a newer agent with extra fields still decodes (evolution rule)."""
    issued, _ = issue()
    doc = msgspec.json.decode(msgspec.json.encode(issued.token))
    doc["FutureField"] = {"x": 1}
    assert decode_token(_reencode(msgspec.json.encode(doc)), NOW) == issued.token


def test_revoke_and_mark_used_change_status() -> None:
    """revoke and mark_used produce REVOKED and USED records (with the nonce)."""
    issued, _ = issue()
    assert revoke(issued.record).Status is TokenStatus.REVOKED
    used = mark_used(issued.record, b"nonce")
    assert used.Status is TokenStatus.USED
    assert used.UsedByNonce == b"nonce"
