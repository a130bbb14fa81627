"""Closed sets of reasons. Their values are snake_case and stable: they become metric labels
and appear in API errors, so a value is never renamed; new members may be added."""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Why a stream record was not applied (label of the rejected-records metric)."""

    DECRYPT_FAILED = "decrypt_failed"
    BAD_KEY_HASH = "bad_key_hash"
    REPLAY = "replay"
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNKNOWN_EPOCH = "unknown_epoch"
    # Older than every epoch still kept: expected for superseded records during a rebuild.
    RETIRED_EPOCH = "retired_epoch"
    OLD_EPOCH = "old_epoch"
    WRONG_STREAM = "wrong_stream"
    TOMBSTONE = "tombstone"
    UNSUPPORTED_VERSION = "unsupported_version"


class RefusalReason(enum.StrEnum):
    """Why an acceptor refused an establish request (travels in HandshakeResponse.Reason)."""

    REUSED = "reused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    WRONG_NAME = "wrong_name"
    BAD_SECRET = "bad_secret"
    UNKNOWN_PEERING = "unknown_peering"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"


REFUSAL_MESSAGES: dict[RefusalReason, str] = {
    RefusalReason.REUSED: "this peering token was already used; generate a new token on the "
    "acceptor",
    RefusalReason.REVOKED: "this peering token was revoked because a newer token was generated "
    "for the same peer; use the newest token",
    RefusalReason.EXPIRED: "this peering token has expired; generate a new token on the acceptor",
    RefusalReason.WRONG_NAME: "this peering token was generated for a different cluster name; "
    "generate a token for this cluster's name",
    RefusalReason.BAD_SECRET: "the establishment secret does not match; the token was altered "
    "or belongs to another peering",
    RefusalReason.UNKNOWN_PEERING: "the acceptor knows no such peering token; it was deleted "
    "or never issued there",
    RefusalReason.MALFORMED: "this is not a valid peering token (copy it again, whole)",
    RefusalReason.UNSUPPORTED_VERSION: "this peering token comes from an unsupported protocol "
    "version; upgrade the agent",
}
