"""The protocol's error tree.

Two branches, because they call for opposite reactions:

- ``PeerFault``: a peer, a user or the (untrusted) broker sent something wrong — a bad
  token, a forged record, a refused handshake. Reject it, count it, keep running.
- ``ProtocolBug``: we did something wrong — an impossible state transition, a key we should
  have had. Crash loudly; a supervisor restarts us and the operator sees a stack trace.

Codecs never let a third-party exception (msgspec, cryptography, binascii) escape: they wrap
it at the edge into one of these.
"""

from __future__ import annotations

from agent.wire.reasons import RefusalReason


class PeeringProtocolError(Exception):
    """Base of every error raised by the protocol core."""


class PeerFault(PeeringProtocolError):
    """Bad input from outside: reject, count, keep running."""


class ProtocolBug(PeeringProtocolError):
    """A broken invariant on our side: do not catch, let it crash."""


class DecryptionFailed(PeerFault):
    """AEAD authentication failed: wrong key, wrong associated data or tampered bytes."""


class BadPublicKey(PeerFault):
    """A peer's X25519 public key has the wrong length or yields no usable shared secret."""


class RecordTooLarge(PeerFault):
    """An event to publish would exceed the record size limit (a user exported too much)."""


class TokenError(PeerFault):
    """A peering token that cannot be used; ``reason`` names the refusal (a closed set)."""

    reason: RefusalReason = RefusalReason.MALFORMED


class TokenMalformed(TokenError):
    """Not a peering token: bad prefix, bad base64, bad JSON, failed checksum."""

    reason = RefusalReason.MALFORMED


class TokenVersionUnsupported(TokenError):
    """A token from a newer (or unknown) protocol version."""

    reason = RefusalReason.UNSUPPORTED_VERSION


class TokenExpired(TokenError):
    """The token's ExpiresAt is in the past."""

    reason = RefusalReason.EXPIRED


class HandshakeMessageInvalid(PeerFault):
    """A bootstrap-topic message that cannot be decoded or opened (forged, corrupted, not ours)."""


class InvalidTransition(PeeringProtocolError):
    """The peering state machine got an input that its current state does not allow.

    Neither branch on purpose: for a user request (establish an ACTIVE peering) the shell
    answers 409 with this message; for an input the shell itself produced it is our bug and
    the shell lets it propagate.
    """
