"""The establish handshake over the acceptor's bootstrap topic (promise 2).

Dialer                                              Acceptor (static key A in the token)
  e = new X25519 key
  k_req, k_resp = HKDF(DH(e, A), peering id, e.pub, A)
  SealedRequest{PeeringID, TokenID, e.pub, AEAD(k_req, HandshakeRequest)}  ──────▶
                                                    open with DH(a, e.pub); decide with
                                                    check_establish_request (pure)
  ◀────── SealedResponse{PeeringID, e.pub, AEAD(k_resp, HandshakeResponse)}

The request proves the token secret with an HMAC over the whole transcript (never the secret
itself). Only the holder of A's private key can derive k_resp, so nobody on the broker can
forge an answer; only the holder of e can read it. Associated data binds each message to the
peering, the token and the ephemeral key, so nothing can be moved between handshakes.
Bootstrap messages are JSON (tagged union ``BootstrapMessage``).
"""

from __future__ import annotations

import hashlib

import msgspec

from agent import crypto
from agent.wire import keys
from agent.wire.errors import DecryptionFailed, HandshakeMessageInvalid, PeerFault
from agent.wire.reasons import REFUSAL_MESSAGES, RefusalReason
from agent.wire.token import PeeringToken, TokenRecord, TokenStatus, establishment_key

HANDSHAKE_VERSION = 1
REQUEST_NONCE_BYTES = 16
MAX_BOOTSTRAP_MESSAGE_BYTES = 64 * 1024


class HandshakeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """Plaintext of a SealedRequest."""

    PeeringID: str
    TokenID: str
    PeerName: str  # from the token: the name the acceptor gave the dialer
    DialerName: str  # the dialer's own cluster name
    DialerPublicKey: bytes  # the dialer's static X25519 key for this peering
    Nonce: bytes
    SentAt: float
    Proof: bytes  # HMAC(proof key, transcript)


class HandshakeResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=False, kw_only=True):
    """Plaintext of a SealedResponse: accepted, or refused with a reason."""

    PeeringID: str
    RequestNonce: bytes
    Accepted: bool
    Reason: RefusalReason | None = None
    Message: str = ""
    AcceptorName: str = ""
    SentAt: float = 0.0


class SealedRequest(msgspec.Struct, frozen=True, tag="handshake_request", tag_field="Type"):
    """Dialer → acceptor on the bootstrap topic. PeeringID and TokenID are in clear so the
    acceptor finds the right key; they are random ids that reveal nothing about services."""

    Version: int
    PeeringID: str
    TokenID: str
    EphemeralPublicKey: bytes
    Nonce: bytes
    Ciphertext: bytes


class SealedResponse(msgspec.Struct, frozen=True, tag="handshake_response", tag_field="Type"):
    """Acceptor → dialer on the bootstrap topic; EphemeralPublicKey says which request."""

    Version: int
    PeeringID: str
    EphemeralPublicKey: bytes
    Nonce: bytes
    Ciphertext: bytes


BootstrapMessage = SealedRequest | SealedResponse


class Accepted(msgspec.Struct, frozen=True):
    """Decision: the request is good; ``duplicate`` when it was already accepted before."""

    duplicate: bool = False


class Refused(msgspec.Struct, frozen=True):
    """Decision: refuse with a reason (and its message for the dialer's user)."""

    reason: RefusalReason

    @property
    def message(self) -> str:
        return REFUSAL_MESSAGES[self.reason]


Decision = Accepted | Refused


class DialerPending(msgspec.Struct, frozen=True, kw_only=True):
    """What the dialer keeps (and persists) between sending a request and the answer."""

    token: PeeringToken
    request: HandshakeRequest
    ephemeral_private_key: bytes
    dialer_private_key: bytes


class OpenedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request the acceptor could open, with the values its checks and answer need."""

    sealed: SealedRequest
    request: HandshakeRequest
    acceptor_public_key: bytes


_JSON = msgspec.json.Encoder()
_BOOTSTRAP_DECODER = msgspec.json.Decoder(BootstrapMessage)
_REQUEST_DECODER = msgspec.json.Decoder(HandshakeRequest)
_RESPONSE_DECODER = msgspec.json.Decoder(HandshakeResponse)


def encode_bootstrap(message: SealedRequest | SealedResponse) -> bytes:
    """Bytes of a bootstrap-topic record value."""
    return _JSON.encode(message)


def decode_bootstrap(value: bytes | None) -> SealedRequest | SealedResponse:
    """Parse a bootstrap-topic record value; raises HandshakeMessageInvalid."""
    if value is None or len(value) > MAX_BOOTSTRAP_MESSAGE_BYTES:
        raise HandshakeMessageInvalid("bootstrap record is empty or too large")
    try:
        message: SealedRequest | SealedResponse = _BOOTSTRAP_DECODER.decode(value)
    except msgspec.DecodeError as exc:
        raise HandshakeMessageInvalid(
            f"bootstrap record is not a handshake message: {exc}"
        ) from exc
    if message.Version != HANDSHAKE_VERSION:
        raise HandshakeMessageInvalid(f"handshake version {message.Version} is not supported")
    return message


def _session_keys(dh: bytes, peering_id: str, eph_pub: bytes, acceptor_pub: bytes) -> bytes:
    return crypto.hkdf(
        dh,
        salt=hashlib.sha256(peering_id.encode()).digest(),
        info=crypto.frame(b"handshake", peering_id.encode(), eph_pub, acceptor_pub),
        length=2 * crypto.KEY_BYTES,
    )


def _request_aad(peering_id: str, token_id: str, eph_pub: bytes) -> bytes:
    version = b"%d" % HANDSHAKE_VERSION
    return crypto.frame(
        b"handshake request", version, peering_id.encode(), token_id.encode(), eph_pub
    )


def _response_aad(peering_id: str, eph_pub: bytes) -> bytes:
    version = b"%d" % HANDSHAKE_VERSION
    return crypto.frame(b"handshake response", version, peering_id.encode(), eph_pub)


def _transcript(request: HandshakeRequest, eph_pub: bytes, acceptor_pub: bytes) -> bytes:
    return crypto.frame(
        b"establish transcript",
        request.PeeringID.encode(),
        request.TokenID.encode(),
        request.PeerName.encode(),
        request.DialerName.encode(),
        request.DialerPublicKey,
        eph_pub,
        acceptor_pub,
        request.Nonce,
        repr(request.SentAt).encode(),
    )


def _proof_key(establishment: bytes, peering_id: str) -> bytes:
    return crypto.hkdf(establishment, salt=b"", info=crypto.frame(b"proof", peering_id.encode()))


def seal_request(
    token: PeeringToken,
    *,
    dialer_name: str,
    dialer_private_key: bytes,
    now: float,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> tuple[SealedRequest, DialerPending]:
    """Dialer: build the sealed establish request for ``token``."""
    ephemeral = crypto.generate_private_key(random_bytes)
    eph_pub = crypto.public_key(ephemeral)
    unsigned = HandshakeRequest(
        PeeringID=token.PeeringID,
        TokenID=token.TokenID,
        PeerName=token.PeerName,
        DialerName=dialer_name,
        DialerPublicKey=crypto.public_key(dialer_private_key),
        Nonce=random_bytes(REQUEST_NONCE_BYTES),
        SentAt=now,
        Proof=b"",
    )
    proof = crypto.mac(
        _proof_key(establishment_key(token.Secret), token.PeeringID),
        _transcript(unsigned, eph_pub, token.AcceptorPublicKey),
    )
    request = msgspec.structs.replace(unsigned, Proof=proof)
    session = _session_keys(
        crypto.diffie_hellman(ephemeral, token.AcceptorPublicKey),
        token.PeeringID,
        eph_pub,
        token.AcceptorPublicKey,
    )
    nonce, ciphertext = crypto.seal(
        session[: crypto.KEY_BYTES],
        _JSON.encode(request),
        _request_aad(token.PeeringID, token.TokenID, eph_pub),
        random_bytes,
    )
    sealed = SealedRequest(
        Version=HANDSHAKE_VERSION,
        PeeringID=token.PeeringID,
        TokenID=token.TokenID,
        EphemeralPublicKey=eph_pub,
        Nonce=nonce,
        Ciphertext=ciphertext,
    )
    pending = DialerPending(
        token=token,
        request=request,
        ephemeral_private_key=ephemeral,
        dialer_private_key=dialer_private_key,
    )
    return sealed, pending


def open_request(sealed: SealedRequest, acceptor_private_key: bytes) -> OpenedRequest:
    """Acceptor: decrypt a request with the peering's static key; raises
    HandshakeMessageInvalid for anything forged, corrupted or inconsistent."""
    acceptor_pub = crypto.public_key(acceptor_private_key)
    try:
        dh = crypto.diffie_hellman(acceptor_private_key, sealed.EphemeralPublicKey)
        session = _session_keys(dh, sealed.PeeringID, sealed.EphemeralPublicKey, acceptor_pub)
        plaintext = crypto.open_sealed(
            session[: crypto.KEY_BYTES],
            sealed.Nonce,
            sealed.Ciphertext,
            _request_aad(sealed.PeeringID, sealed.TokenID, sealed.EphemeralPublicKey),
        )
        request = _REQUEST_DECODER.decode(plaintext)
    except (PeerFault, msgspec.DecodeError) as exc:
        raise HandshakeMessageInvalid(f"cannot open establish request: {exc}") from exc
    if (request.PeeringID, request.TokenID) != (sealed.PeeringID, sealed.TokenID):
        raise HandshakeMessageInvalid("establish request ids differ from its envelope")
    if len(request.DialerPublicKey) != crypto.KEY_BYTES:
        raise HandshakeMessageInvalid("establish request carries a malformed dialer key")
    return OpenedRequest(sealed=sealed, request=request, acceptor_public_key=acceptor_pub)


def check_establish_request(
    record: TokenRecord | None, opened: OpenedRequest, now: float
) -> Decision:
    """Acceptor's decision, from its stored token record alone. The secret is checked
    before the token's state, so someone without the secret learns nothing about it."""
    request = opened.request
    if record is None or (record.PeeringID, record.TokenID) != (request.PeeringID, request.TokenID):
        return Refused(RefusalReason.UNKNOWN_PEERING)
    expected = crypto.mac(
        _proof_key(record.EstablishmentKey, record.PeeringID),
        _transcript(request, opened.sealed.EphemeralPublicKey, opened.acceptor_public_key),
    )
    if not crypto.constant_time_equal(expected, request.Proof):
        return Refused(RefusalReason.BAD_SECRET)
    if record.Status is TokenStatus.REVOKED:
        return Refused(RefusalReason.REVOKED)
    if record.Status is TokenStatus.USED:
        if record.UsedByNonce and crypto.constant_time_equal(record.UsedByNonce, request.Nonce):
            return Accepted(duplicate=True)
        return Refused(RefusalReason.REUSED)
    if now >= record.ExpiresAt:
        return Refused(RefusalReason.EXPIRED)
    if request.PeerName != record.PeerName or request.DialerName != record.PeerName:
        return Refused(RefusalReason.WRONG_NAME)
    return Accepted()


def seal_response(
    opened: OpenedRequest,
    decision: Decision,
    *,
    acceptor_private_key: bytes,
    acceptor_name: str,
    now: float,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> SealedResponse:
    """Acceptor: the sealed answer to an opened request."""
    sealed = opened.sealed
    response = HandshakeResponse(
        PeeringID=sealed.PeeringID,
        RequestNonce=opened.request.Nonce,
        Accepted=isinstance(decision, Accepted),
        Reason=decision.reason if isinstance(decision, Refused) else None,
        Message=decision.message if isinstance(decision, Refused) else "",
        AcceptorName=acceptor_name,
        SentAt=now,
    )
    dh = crypto.diffie_hellman(acceptor_private_key, sealed.EphemeralPublicKey)
    session = _session_keys(
        dh, sealed.PeeringID, sealed.EphemeralPublicKey, opened.acceptor_public_key
    )
    nonce, ciphertext = crypto.seal(
        session[crypto.KEY_BYTES :],
        _JSON.encode(response),
        _response_aad(sealed.PeeringID, sealed.EphemeralPublicKey),
        random_bytes,
    )
    return SealedResponse(
        Version=HANDSHAKE_VERSION,
        PeeringID=sealed.PeeringID,
        EphemeralPublicKey=sealed.EphemeralPublicKey,
        Nonce=nonce,
        Ciphertext=ciphertext,
    )


def is_response_to(pending: DialerPending, sealed: SealedResponse) -> bool:
    """Whether a bootstrap response is addressed to this pending request (cheap filter)."""
    eph_pub = crypto.public_key(pending.ephemeral_private_key)
    return sealed.PeeringID == pending.token.PeeringID and sealed.EphemeralPublicKey == eph_pub


def open_response(pending: DialerPending, sealed: SealedResponse) -> HandshakeResponse:
    """Dialer: decrypt and check the answer; raises HandshakeMessageInvalid if forged."""
    token = pending.token
    if not is_response_to(pending, sealed):
        raise HandshakeMessageInvalid("handshake response is for another request")
    try:
        dh = crypto.diffie_hellman(pending.ephemeral_private_key, token.AcceptorPublicKey)
        session = _session_keys(
            dh, token.PeeringID, sealed.EphemeralPublicKey, token.AcceptorPublicKey
        )
        plaintext = crypto.open_sealed(
            session[crypto.KEY_BYTES :],
            sealed.Nonce,
            sealed.Ciphertext,
            _response_aad(sealed.PeeringID, sealed.EphemeralPublicKey),
        )
        response = _RESPONSE_DECODER.decode(plaintext)
    except (DecryptionFailed, msgspec.DecodeError) as exc:
        raise HandshakeMessageInvalid(f"cannot open handshake response: {exc}") from exc
    if response.PeeringID != token.PeeringID or response.RequestNonce != pending.request.Nonce:
        raise HandshakeMessageInvalid("handshake response does not answer this request")
    if not response.Accepted and response.Reason is None:
        raise HandshakeMessageInvalid("refusal without a reason")
    return response


def dialer_stream_root(pending: DialerPending) -> bytes:
    """Dialer: the peering's root secret after an accepted handshake (see keys.py)."""
    token = pending.token
    return keys.stream_root(
        static_static_dh=crypto.diffie_hellman(pending.dialer_private_key, token.AcceptorPublicKey),
        ephemeral_static_dh=crypto.diffie_hellman(
            pending.ephemeral_private_key, token.AcceptorPublicKey
        ),
        establishment_key=establishment_key(token.Secret),
        peering_id=token.PeeringID,
    )


def acceptor_stream_root(
    opened: OpenedRequest, record: TokenRecord, acceptor_private_key: bytes
) -> bytes:
    """Acceptor: the same root secret, from its side of both exchanges."""
    return keys.stream_root(
        static_static_dh=crypto.diffie_hellman(
            acceptor_private_key, opened.request.DialerPublicKey
        ),
        ephemeral_static_dh=crypto.diffie_hellman(
            acceptor_private_key, opened.sealed.EphemeralPublicKey
        ),
        establishment_key=record.EstablishmentKey,
        peering_id=record.PeeringID,
    )
