"""Stream record codec: encryption, keyed record keys and every reject reason."""

from __future__ import annotations

import msgspec
import pytest

from agent import crypto
from agent.model import HealthCheck, ServiceInstance
from agent.wire import keys
from agent.wire.envelope import (
    MAX_RECORD_BYTES,
    Envelope,
    Reject,
    decode_record,
    encode_event,
)
from agent.wire.errors import ProtocolBug, RecordTooLarge
from agent.wire.events import (
    Heartbeat,
    InstanceRemove,
    InstanceUpsert,
    UnknownEvent,
    instance_key,
)
from agent.wire.reasons import RejectReason
from tests.wire_helpers import NOW, Established, seeded_random

WEB = ServiceInstance(
    ID="web-1",
    Name="web-secret-name",
    Address="10.1.2.3",
    Port=8080,
    Tags=("tag-secret",),
    Meta={"team": "payments"},
    Checks=(HealthCheck(CheckID="service:web-1", Name="ttl"),),
)


def upsert(seq: int = 1, epoch: int = 1, instance: ServiceInstance = WEB) -> InstanceUpsert:
    """An upsert event for ``instance``."""
    return InstanceUpsert(
        Epoch=epoch,
        Seq=seq,
        SentAt=NOW,
        Key=instance_key(instance.ID),
        Instance=instance,
        ChangedAt=NOW,
    )


def test_roundtrip_upsert() -> None:
    """An encoded upsert decodes back to the same event."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert(), seeded_random(1))
    assert decode_record(peers.a2d, key, value) == upsert()


def test_nothing_readable_on_the_broker() -> None:
    """Neither key nor value contains a service name, address, tag or meta value."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    for secret in (b"web-secret-name", b"10.1.2.3", b"tag-secret", b"payments", b"web-1"):
        assert secret not in key
        assert secret not in value


def test_record_key_is_stable_so_compaction_works() -> None:
    """Upsert and remove of one instance share a record key; other instances do not."""
    peers = Established()
    key1, _ = encode_event(peers.a2d, upsert())
    remove = InstanceRemove(Epoch=1, Seq=2, SentAt=NOW, Key=instance_key("web-1"), ChangedAt=NOW)
    key2, _ = encode_event(peers.a2d, remove)
    key3, _ = encode_event(peers.a2d, upsert(instance=msgspec.structs.replace(WEB, ID="web-2")))
    assert key1 == key2 != key3
    assert len(key1) == keys.RECORD_KEY_BYTES


def test_bit_flip_anywhere_is_rejected() -> None:
    """Flipping any single byte of the value yields a Reject, never an event."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    for index in range(len(value)):
        tampered = value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1 :]
        assert isinstance(decode_record(peers.a2d, key, tampered), Reject)


def test_truncated_value_is_rejected() -> None:
    """Every truncation of a value yields a Reject (MALFORMED or DECRYPT_FAILED)."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    for cut in range(len(value)):
        result = decode_record(peers.a2d, key, value[:cut])
        assert isinstance(result, Reject)
        assert result.reason in {RejectReason.MALFORMED, RejectReason.DECRYPT_FAILED}


def test_record_moved_to_another_key_fails_decryption() -> None:
    """A value copied under another instance's record key is DECRYPT_FAILED."""
    peers = Established()
    _, value = encode_event(peers.a2d, upsert())
    other_key = keys.record_key(peers.a2d, instance_key("web-2"))
    assert decode_record(peers.a2d, other_key, value).reason is RejectReason.DECRYPT_FAILED  # type: ignore[union-attr]


def test_record_moved_to_other_direction_or_peering_is_wrong_stream() -> None:
    """A record replayed into the other direction or another peering is WRONG_STREAM."""
    peers, other = Established(), Established(seed=1, peering_id="other-peering")
    key, value = encode_event(peers.a2d, upsert())
    assert decode_record(peers.d2a, key, value) == Reject(RejectReason.WRONG_STREAM)
    assert decode_record(other.a2d, key, value) == Reject(RejectReason.WRONG_STREAM)


def test_record_with_forged_stream_tag_still_fails() -> None:
    """Rewriting the public stream tag to the target stream only gets DECRYPT_FAILED."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    envelope = msgspec.msgpack.decode(value, type=Envelope)
    moved = msgspec.msgpack.encode(
        msgspec.structs.replace(envelope, Stream=keys.stream_tag(peers.d2a))
    )
    result = decode_record(peers.d2a, key, moved)
    assert isinstance(result, Reject)
    assert result.reason is RejectReason.DECRYPT_FAILED


def test_unknown_and_retired_epochs() -> None:
    """A future epoch is UNKNOWN_EPOCH; an epoch older than all kept ones is RETIRED_EPOCH."""
    peers = Established()
    rotated, _ = keys.begin_rotation(peers.a2d, crypto.public_key(peers.dialer_private))
    key, value = encode_event(rotated, upsert(epoch=2))
    assert decode_record(peers.a2d, key, value).reason is RejectReason.UNKNOWN_EPOCH  # type: ignore[union-attr]
    old_key, old_value = encode_event(rotated, upsert(epoch=1))
    retired = keys.retire_epochs(rotated, 2)
    assert decode_record(retired, old_key, old_value) == Reject(
        RejectReason.RETIRED_EPOCH, "epoch 1"
    )


def test_oversized_and_tombstone_and_bad_key() -> None:
    """Oversized values, null values and wrong-length keys get their own reasons."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    big = decode_record(peers.a2d, key, b"\x00" * (MAX_RECORD_BYTES + 1))
    assert isinstance(big, Reject)
    assert big.reason is RejectReason.OVERSIZED
    assert decode_record(peers.a2d, key, None) == Reject(RejectReason.TOMBSTONE)
    assert decode_record(peers.a2d, None, value).reason is RejectReason.BAD_KEY_HASH  # type: ignore[union-attr]
    assert decode_record(peers.a2d, key[:5], value).reason is RejectReason.BAD_KEY_HASH  # type: ignore[union-attr]


def test_encoding_oversized_instance_is_a_user_fault() -> None:
    """An instance too large for one record raises RecordTooLarge when encoding."""
    peers = Established()
    huge = msgspec.structs.replace(WEB, Meta={"blob": "x" * MAX_RECORD_BYTES})
    with pytest.raises(RecordTooLarge):
        encode_event(peers.a2d, upsert(instance=huge))


def test_encoding_with_unknown_epoch_is_our_bug() -> None:
    """Encoding for an epoch we have no key for is a ProtocolBug."""
    with pytest.raises(ProtocolBug):
        encode_event(Established().a2d, upsert(epoch=5))


def test_unknown_envelope_version() -> None:
    """An envelope from a newer protocol version is UNSUPPORTED_VERSION."""
    peers = Established()
    key, value = encode_event(peers.a2d, upsert())
    envelope = msgspec.msgpack.decode(value, type=Envelope)
    newer = msgspec.msgpack.encode(msgspec.structs.replace(envelope, V=2))
    assert decode_record(peers.a2d, key, newer).reason is RejectReason.UNSUPPORTED_VERSION  # type: ignore[union-attr]


def _seal_raw(peers: Established, logical: str, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt arbitrary plaintext as an authentic record (simulates a newer exporter)."""
    from agent.wire.envelope import _aad

    ring = peers.a2d
    record_key = keys.record_key(ring, logical)
    aead_key = keys.aead_key(ring, 1)
    assert aead_key is not None
    nonce, ciphertext = crypto.seal(aead_key, plaintext, _aad(ring, 1, record_key))
    envelope = Envelope(
        V=1, Stream=keys.stream_tag(ring), Epoch=1, Nonce=nonce, Ciphertext=ciphertext
    )
    return record_key, msgspec.msgpack.encode(envelope)


def test_unknown_event_type_from_newer_peer_is_skippable() -> None:
    """An authentic event with an unknown Type decodes to UnknownEvent (keeps its Seq)."""
    peers = Established()
    plain = msgspec.msgpack.encode({"Type": "service_intentions", "Epoch": 1, "Seq": 7, "X": 1})
    key, value = _seal_raw(peers, "control/intentions", plain)
    assert decode_record(peers.a2d, key, value) == UnknownEvent(
        Type="service_intentions", Epoch=1, Seq=7
    )


def test_unknown_fields_from_newer_peer_are_ignored() -> None:
    """An authentic known event with extra fields still decodes."""
    peers = Established()
    doc = msgspec.to_builtins(Heartbeat(Epoch=1, Seq=3, SentAt=NOW, LiveKeys=2))
    doc["FutureField"] = [1, 2]
    key, value = _seal_raw(peers, "control/heartbeat", msgspec.msgpack.encode(doc))
    assert decode_record(peers.a2d, key, value) == Heartbeat(Epoch=1, Seq=3, SentAt=NOW, LiveKeys=2)


def test_authentic_event_filed_under_wrong_key_is_bad_key_hash() -> None:
    """An exporter bug filing an event under another logical key is BAD_KEY_HASH."""
    peers = Established()
    plain = msgspec.msgpack.encode(upsert())
    key, value = _seal_raw(peers, instance_key("someone-else"), plain)
    assert decode_record(peers.a2d, key, value).reason is RejectReason.BAD_KEY_HASH  # type: ignore[union-attr]


def test_authentic_but_invalid_event_is_malformed() -> None:
    """Authentic plaintext that is not a valid event, or whose epoch differs, is MALFORMED."""
    peers = Established()
    key, value = _seal_raw(peers, "control/heartbeat", b"\xc1garbage")
    assert decode_record(peers.a2d, key, value).reason is RejectReason.MALFORMED  # type: ignore[union-attr]
    wrong_epoch = msgspec.msgpack.encode(Heartbeat(Epoch=9, Seq=1, SentAt=NOW))
    key, value = _seal_raw(peers, "control/heartbeat", wrong_epoch)
    assert decode_record(peers.a2d, key, value).reason is RejectReason.MALFORMED  # type: ignore[union-attr]


# One record, byte for byte, as encoded when the AAD's stream part started being cached
# (session 3): a change to the key hash, the AAD, the cipher or the envelope layout shows here
# first, before a peer running the older code rejects every record.
GOLDEN_KEY = "ef8e7898c229ca403275688cdea966ad"
GOLDEN_VALUE = (
    "85a15601a653747265616dc408612a0bd266d39e2fa545706f636801a54e6f6e6365c40c457c769f"
    "39d8644199c0e5bdaa43697068657274657874c50126fb769f813ae3bd1463c6414743a8fe97c763"
    "d3a36e43df469432b7b2f1f5db597ec5beefd2869e31a11e0c1741087f6c534ee46afce65d9ccdd2"
    "34ba26d63e20626d9fa2fbecbfeadc0eda5b2a653c5693b76cad321c2d3bea937e7275feaa0b82fe"
    "1b2ce1d78d5e4ea376fdd8c8c192fb71fdc0279f919508ba00a4db8f7113ee820f39cdbf360808e2"
    "36c314c39258d2b809d82c2bb099ee32463407cd6fb320340214f61489bb27e6dc633b02f777dfce"
    "ebf8bb41638c847cdd56ba13ebd04b2eaae5c06f8f32e90a7bec49d3da24a31b72c295f99fe33abf"
    "daece092e4365b08d3c03f423b90214fc01e1d7ef34f519e46f5bb276a3558d3d58db70e397f41bc"
    "865bbaa4c9d9032a0e38ade9adc461a0a8305d38a609aae2de28c8003aa3a06160d7f6ee"
)


def test_encoding_is_byte_for_byte_stable() -> None:
    ring = Established().a2d
    instance = ServiceInstance(
        ID="web-1", Name="web", Address="10.0.0.1", Port=8080, Tags=("v1",), Meta={"team": "a"},
        Checks=(HealthCheck(CheckID="service:web-1", Name="ttl"),),
    )  # fmt: skip
    event = InstanceUpsert(
        Epoch=1, Seq=7, SentAt=NOW, Key=instance_key("web-1"), Instance=instance, ChangedAt=NOW
    )
    key, value = encode_event(ring, event, seeded_random(5))
    assert (key.hex(), value.hex()) == (GOLDEN_KEY, GOLDEN_VALUE)
    decoded = decode_record(ring, bytes.fromhex(GOLDEN_KEY), bytes.fromhex(GOLDEN_VALUE))
    assert decoded == event
