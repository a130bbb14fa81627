"""Property tests: decoders and the reducer never raise undeclared errors on arbitrary input."""

from __future__ import annotations

import contextlib

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.reducer import ImportState, apply
from agent.wire import handshake
from agent.wire.envelope import Envelope, Reject, decode_record, encode_event
from agent.wire.errors import HandshakeMessageInvalid, TokenError
from agent.wire.events import Heartbeat, UnknownEvent
from agent.wire.reasons import RejectReason
from agent.wire.token import decode_token
from tests.wire_helpers import NOW, Established, handshake_roundtrip

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PEERS = Established()
_, ACCEPTOR_PRIVATE, SEALED_REQUEST, PENDING = handshake_roundtrip()


@FAST
@given(st.text(max_size=300))
def test_decode_token_only_raises_token_errors(text: str) -> None:
    """decode_token on any text returns a token or raises a TokenError."""
    with contextlib.suppress(TokenError):
        decode_token(text, NOW)


@FAST
@given(st.binary(max_size=400))
def test_decode_token_base64_payloads(payload: bytes) -> None:
    """A well-formed 'pat1.' wrapper around random bytes only raises TokenError."""
    from agent import crypto

    text = f"pat1.{crypto.b64encode(payload)}.{crypto.b64encode(payload[:8])}"
    with contextlib.suppress(TokenError):
        decode_token(text, NOW)


@FAST
@given(st.one_of(st.none(), st.binary(max_size=600)))
def test_decode_bootstrap_only_raises_handshake_invalid(value: bytes | None) -> None:
    """decode_bootstrap on any bytes raises nothing but HandshakeMessageInvalid."""
    with contextlib.suppress(HandshakeMessageInvalid):
        handshake.decode_bootstrap(value)


@FAST
@given(st.binary(max_size=200), st.binary(min_size=12, max_size=12), st.binary(max_size=32))
def test_open_request_only_raises_handshake_invalid(
    ciphertext: bytes, nonce: bytes, eph: bytes
) -> None:
    """Opening a request with random ciphertext/keys raises only HandshakeMessageInvalid."""
    forged = msgspec.structs.replace(
        SEALED_REQUEST, Ciphertext=ciphertext, Nonce=nonce, EphemeralPublicKey=eph
    )
    with contextlib.suppress(HandshakeMessageInvalid):
        handshake.open_request(forged, ACCEPTOR_PRIVATE)


@FAST
@given(st.binary(max_size=200), st.binary(max_size=16))
def test_open_response_only_raises_handshake_invalid(ciphertext: bytes, nonce: bytes) -> None:
    """A forged response with random bytes raises only HandshakeMessageInvalid."""
    forged = handshake.SealedResponse(
        Version=1,
        PeeringID=PENDING.token.PeeringID,
        EphemeralPublicKey=SEALED_REQUEST.EphemeralPublicKey,
        Nonce=nonce,
        Ciphertext=ciphertext,
    )
    with contextlib.suppress(HandshakeMessageInvalid):
        handshake.open_response(PENDING, forged)


@FAST
@given(st.one_of(st.none(), st.binary(max_size=40)), st.one_of(st.none(), st.binary(max_size=600)))
def test_decode_record_never_raises(key: bytes | None, value: bytes | None) -> None:
    """decode_record returns a Reject (never raises) for arbitrary key and value bytes."""
    assert isinstance(decode_record(PEERS.a2d, key, value), Reject)


@FAST
@given(st.integers(min_value=0, max_value=10_000), st.binary(max_size=64))
def test_decode_record_with_valid_frame_and_random_ciphertext(
    epoch: int, ciphertext: bytes
) -> None:
    """Envelopes with the right stream tag but random ciphertext are rejected, not raised."""
    key, value = encode_event(PEERS.a2d, Heartbeat(Epoch=1, Seq=1, SentAt=NOW))
    envelope = msgspec.msgpack.decode(value, type=Envelope)
    forged = msgspec.structs.replace(envelope, Epoch=epoch, Ciphertext=ciphertext)
    assert isinstance(decode_record(PEERS.a2d, key, msgspec.msgpack.encode(forged)), Reject)


decoded_values = st.one_of(
    st.builds(Reject, st.sampled_from(list(RejectReason))),
    st.builds(
        Heartbeat,
        Epoch=st.integers(0, 5),
        Seq=st.integers(0, 50),
        SentAt=st.floats(allow_nan=False),
        LiveKeys=st.integers(-1, 5),
    ),
    st.builds(
        UnknownEvent, Type=st.text(max_size=5), Epoch=st.integers(0, 5), Seq=st.integers(0, 50)
    ),
)


@FAST
@given(st.lists(st.tuples(st.integers(-1, 60), decoded_values), max_size=30))
def test_reducer_never_raises_and_offsets_never_go_back(steps: list[tuple[int, object]]) -> None:
    """apply over arbitrary decoded sequences never raises; LastOffset and LastSeq only grow."""
    state = ImportState()
    for offset, decoded in steps:
        new_state, _ = apply(state, offset, decoded, NOW)  # type: ignore[arg-type]
        assert new_state.LastOffset >= state.LastOffset
        assert new_state.LastSeq >= state.LastSeq
        state = new_state
