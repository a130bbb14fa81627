"""The establish handshake: sealing, opening, the acceptor's decision and the answer."""

from __future__ import annotations

import msgspec
import pytest

from agent import crypto
from agent.wire import handshake, keys
from agent.wire.errors import HandshakeMessageInvalid
from agent.wire.handshake import Accepted, Refused
from agent.wire.reasons import RefusalReason
from agent.wire.token import decode_token, encode_token, mark_used, revoke
from tests.wire_helpers import NOW, PEERING_ID, handshake_roundtrip, issue, seeded_random


def test_accepted_handshake_derives_same_stream_keys() -> None:
    """Accepted request: the dialer reads 'accepted' and both sides get the same keys."""
    issued, acceptor_private, sealed, pending = handshake_roundtrip()
    wire = handshake.decode_bootstrap(handshake.encode_bootstrap(sealed))
    assert isinstance(wire, handshake.SealedRequest)
    opened = handshake.open_request(wire, acceptor_private)
    decision = handshake.check_establish_request(issued.record, opened, NOW + 11)
    assert decision == Accepted()
    answer = handshake.seal_response(
        opened, decision, acceptor_private_key=acceptor_private, acceptor_name="alpha", now=NOW
    )
    answer_wire = handshake.decode_bootstrap(handshake.encode_bootstrap(answer))
    assert isinstance(answer_wire, handshake.SealedResponse)
    response = handshake.open_response(pending, answer_wire)
    assert response.Accepted
    assert response.Reason is None
    assert response.AcceptorName == "alpha"
    dialer_root = handshake.dialer_stream_root(pending)
    assert dialer_root == handshake.acceptor_stream_root(opened, issued.record, acceptor_private)
    direction = keys.Direction.ACCEPTOR_TO_DIALER
    assert (
        keys.new_keyring(dialer_root, PEERING_ID, direction).KeyHashKey
        == keys.new_keyring(
            handshake.acceptor_stream_root(opened, issued.record, acceptor_private),
            PEERING_ID,
            direction,
        ).KeyHashKey
    )


def test_request_never_contains_the_secret() -> None:
    """The bootstrap record carries neither the secret nor the cluster names in clear."""
    issued, _, sealed, _ = handshake_roundtrip()
    raw = handshake.encode_bootstrap(sealed)
    assert issued.token.Secret not in raw
    assert b"beta" not in raw
    assert b"alpha" not in raw


def _decide(
    record_change: object = None, now: float = NOW + 11, **request_change: object
) -> Refused | Accepted:
    issued, acceptor_private, sealed, _ = handshake_roundtrip()
    opened = handshake.open_request(sealed, acceptor_private)
    if request_change:
        opened = msgspec.structs.replace(
            opened, request=msgspec.structs.replace(opened.request, **request_change)
        )
    record = issued.record if record_change is None else record_change(issued.record)  # type: ignore[operator]
    return handshake.check_establish_request(record, opened, now)


def test_reused_token_is_refused() -> None:
    """A token already used by another request is REUSED."""
    assert _decide(lambda r: mark_used(r, b"another nonce")) == Refused(RefusalReason.REUSED)


def test_retransmitted_request_is_accepted_again() -> None:
    """The very request that used the token is answered 'accepted' again (idempotent)."""
    issued, acceptor_private, sealed, pending = handshake_roundtrip()
    opened = handshake.open_request(sealed, acceptor_private)
    used = mark_used(issued.record, pending.request.Nonce)
    assert handshake.check_establish_request(used, opened, NOW) == Accepted(duplicate=True)


def test_revoked_token_is_refused() -> None:
    """A token replaced by a newer one is REVOKED."""
    assert _decide(revoke) == Refused(RefusalReason.REVOKED)


def test_expired_token_is_refused_by_acceptor() -> None:
    """A request arriving after the token's expiry is EXPIRED."""
    assert _decide(now=NOW + 3600) == Refused(RefusalReason.EXPIRED)


def test_wrong_name_is_refused() -> None:
    """A dialer whose cluster name is not the token's peer name is WRONG_NAME."""
    issued, acceptor_private = issue(peer_name="gamma")
    sealed, _ = handshake.seal_request(
        issued.token,
        dialer_name="beta",
        dialer_private_key=crypto.generate_private_key(seeded_random(9)),
        now=NOW,
    )
    opened = handshake.open_request(sealed, acceptor_private)
    decision = handshake.check_establish_request(issued.record, opened, NOW)
    assert decision == Refused(RefusalReason.WRONG_NAME)
    assert "different cluster name" in decision.message


def test_wrong_secret_is_refused() -> None:
    """A token whose secret was altered (checksum recomputed) is BAD_SECRET."""
    issued, acceptor_private = issue()
    forged = msgspec.structs.replace(issued.token, Secret=bytes(32))
    token = decode_token(encode_token(forged), NOW)
    sealed, _ = handshake.seal_request(
        token, dialer_name="beta", dialer_private_key=bytes(range(32)), now=NOW
    )
    opened = handshake.open_request(sealed, acceptor_private)
    assert handshake.check_establish_request(issued.record, opened, NOW) == Refused(
        RefusalReason.BAD_SECRET
    )


def test_tampered_request_field_breaks_the_proof() -> None:
    """Changing any transcript field after sealing fails the proof (BAD_SECRET)."""
    assert _decide(DialerName="mallory") == Refused(RefusalReason.BAD_SECRET)
    assert _decide(SentAt=NOW + 99) == Refused(RefusalReason.BAD_SECRET)


def test_unknown_peering_is_refused() -> None:
    """No stored record, or a record of another token, is UNKNOWN_PEERING."""
    assert _decide(lambda r: None) == Refused(RefusalReason.UNKNOWN_PEERING)
    other = msgspec.structs.replace
    assert _decide(lambda r: other(r, TokenID="x")) == Refused(RefusalReason.UNKNOWN_PEERING)


def test_every_refusal_has_its_own_message() -> None:
    """Refusal messages are distinct for every reason."""
    messages = {Refused(reason).message for reason in RefusalReason}
    assert len(messages) == len(RefusalReason)


def test_refusal_reaches_the_dialer() -> None:
    """A refusal travels sealed and the dialer reads reason and message."""
    _issued, acceptor_private, sealed, pending = handshake_roundtrip()
    opened = handshake.open_request(sealed, acceptor_private)
    answer = handshake.seal_response(
        opened,
        Refused(RefusalReason.REUSED),
        acceptor_private_key=acceptor_private,
        acceptor_name="alpha",
        now=NOW,
    )
    response = handshake.open_response(pending, answer)
    assert not response.Accepted
    assert response.Reason is RefusalReason.REUSED
    assert "already used" in response.Message


def test_request_to_wrong_acceptor_key_cannot_be_opened() -> None:
    """A request sealed to another key (tampered token key) is HandshakeMessageInvalid."""
    _, _, sealed, _ = handshake_roundtrip()
    with pytest.raises(HandshakeMessageInvalid):
        handshake.open_request(sealed, crypto.generate_private_key(seeded_random(42)))


def test_tampered_request_envelope_cannot_be_opened() -> None:
    """Bit flips and swapped clear-text ids make the request unopenable."""
    _, acceptor_private, sealed, _ = handshake_roundtrip()
    flipped = bytes([sealed.Ciphertext[0] ^ 1]) + sealed.Ciphertext[1:]
    for bad in (
        msgspec.structs.replace(sealed, Ciphertext=flipped),
        msgspec.structs.replace(sealed, TokenID="other"),
        msgspec.structs.replace(sealed, PeeringID="other"),
        msgspec.structs.replace(sealed, EphemeralPublicKey=bytes(32)),
        msgspec.structs.replace(sealed, Nonce=b"x"),
    ):
        with pytest.raises(HandshakeMessageInvalid):
            handshake.open_request(bad, acceptor_private)


def test_forged_response_is_rejected_by_dialer() -> None:
    """A response not made with the acceptor's key (e.g. by a broker attacker) is invalid."""
    issued, _, sealed, pending = handshake_roundtrip()
    attacker_private = crypto.generate_private_key(seeded_random(77))
    # The attacker opens nothing, but tries to answer with its own key for the same request.
    fake_opened = handshake.OpenedRequest(
        sealed=sealed, request=pending.request, acceptor_public_key=issued.token.AcceptorPublicKey
    )
    forged = handshake.seal_response(
        fake_opened, Accepted(), acceptor_private_key=attacker_private, acceptor_name="x", now=NOW
    )
    with pytest.raises(HandshakeMessageInvalid):
        handshake.open_response(pending, forged)


def test_response_for_another_request_is_rejected() -> None:
    """A genuine response to a different request does not answer this one."""
    _issued, acceptor_private, sealed, _ = handshake_roundtrip(seed=1)
    _, _, _, other_pending = handshake_roundtrip(seed=2)
    opened = handshake.open_request(sealed, acceptor_private)
    answer = handshake.seal_response(
        opened, Accepted(), acceptor_private_key=acceptor_private, acceptor_name="a", now=NOW
    )
    assert not handshake.is_response_to(other_pending, answer)
    with pytest.raises(HandshakeMessageInvalid):
        handshake.open_response(other_pending, answer)


@pytest.mark.parametrize(
    "value",
    [None, b"", b"{}", b"[]", b'{"Type":"nope"}', b"x" * 70_000, b'{"Type":"handshake_request"}'],
)
def test_garbage_bootstrap_records_are_invalid(value: bytes | None) -> None:
    """Anything that is not a handshake message raises HandshakeMessageInvalid."""
    with pytest.raises(HandshakeMessageInvalid):
        handshake.decode_bootstrap(value)


def test_unknown_handshake_version_is_invalid() -> None:
    """A bootstrap message with a newer Version is rejected, not misread."""
    _, _, sealed, _ = handshake_roundtrip()
    newer = msgspec.structs.replace(sealed, Version=2)
    with pytest.raises(HandshakeMessageInvalid, match="version"):
        handshake.decode_bootstrap(handshake.encode_bootstrap(newer))


def test_end_to_end_streams_in_both_directions_with_rotation() -> None:
    """Keys from a real handshake carry events both ways, and each side can rotate."""
    from agent.reducer import ImportState, PublisherState, apply, rotate
    from agent.wire.envelope import decode_record, encode_event
    from agent.wire.events import Heartbeat

    issued, acceptor_private, sealed, pending = handshake_roundtrip()
    opened = handshake.open_request(sealed, acceptor_private)
    acceptor_root = handshake.acceptor_stream_root(opened, issued.record, acceptor_private)
    dialer_root = handshake.dialer_stream_root(pending)
    sides = {
        # direction: (exporter's keyring, importer's keyring, importer's static private key)
        keys.Direction.ACCEPTOR_TO_DIALER: (acceptor_root, dialer_root, pending.dialer_private_key),
        keys.Direction.DIALER_TO_ACCEPTOR: (dialer_root, acceptor_root, acceptor_private),
    }
    for direction, (exporter_root, importer_root, importer_private) in sides.items():
        exporter = keys.new_keyring(exporter_root, PEERING_ID, direction)
        importer = keys.new_keyring(importer_root, PEERING_ID, direction)
        pub, exporter, rotation = rotate(
            PublisherState(), exporter, crypto.public_key(importer_private), NOW
        )
        key, value = encode_event(exporter, rotation)
        _, effects = apply(ImportState(), 0, decode_record(importer, key, value), NOW)
        assert [type(e).__name__ for e in effects] == ["RotatedKeys"]
        importer = keys.accept_rotation(
            importer, rotation.NewEpoch, rotation.RotationPublicKey, importer_private
        )
        beat = Heartbeat(Epoch=pub.Epoch, Seq=pub.NextSeq, SentAt=NOW)
        key, value = encode_event(exporter, beat)
        assert decode_record(importer, key, value) == beat
