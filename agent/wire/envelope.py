"""Stream records: Kafka key and value of one encrypted event (promise 3).

- key   = HMAC(key-hash key of the stream, logical key)[:16]
- value = MessagePack of ``Envelope`` {V, Stream, Epoch, Nonce, Ciphertext}
- Ciphertext = ChaCha20-Poly1305(aead key of Epoch, MessagePack of the event,
  AAD = frame("stream record", V, peering id, direction, Epoch, record key))

The AAD makes a record useless anywhere but its own peering, direction, epoch and key.
``decode_record`` never raises for bad input: it returns ``Reject(reason)`` with a reason
from the closed ``RejectReason`` set. Replays and old epochs are the reducer's call, since
they depend on what was applied before.
"""

from __future__ import annotations

import functools

import msgspec

from agent import crypto
from agent.wire import keys
from agent.wire.errors import DecryptionFailed, ProtocolBug, RecordTooLarge
from agent.wire.events import KNOWN_TAGS, Event, UnknownEvent, logical_key
from agent.wire.keys import StreamKeyring
from agent.wire.reasons import RejectReason

ENVELOPE_VERSION = 1
# Below Kafka's default max.message.bytes (1 MiB + overhead), so our limit bites first.
MAX_RECORD_BYTES = 1_000_000


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The record value as stored on the broker (MessagePack)."""

    V: int
    Stream: bytes
    Epoch: int
    Nonce: bytes
    Ciphertext: bytes


class Reject(msgspec.Struct, frozen=True):
    """A record that was not decoded into an event, and why."""

    reason: RejectReason
    detail: str = ""


Decoded = Event | UnknownEvent | Reject


class _Header(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    Type: str
    Epoch: int
    Seq: int
    SentAt: float = 0.0


_MSGPACK = msgspec.msgpack.Encoder()
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope)
_HEADER_DECODER = msgspec.msgpack.Decoder(_Header)
_EVENT_DECODER = msgspec.msgpack.Decoder(Event)


def _aad(keyring: StreamKeyring, epoch: int, record_key: bytes) -> bytes:
    # frame(a, ..., e, key) == frame(a, ..., e) + frame(key): the stream's part is framed once
    # per epoch, not for every record on both ends.
    return _aad_prefix(keyring.PeeringID, keyring.StreamDirection, epoch) + crypto.frame(record_key)


@functools.lru_cache(maxsize=256)
def _aad_prefix(peering_id: str, direction: keys.Direction, epoch: int) -> bytes:
    return crypto.frame(
        b"stream record",
        b"%d" % ENVELOPE_VERSION,
        peering_id.encode(),
        direction.value.encode(),
        b"%d" % epoch,
    )


def encode_event(
    keyring: StreamKeyring,
    event: Event,
    random_bytes: crypto.RandomBytes = crypto.system_random,
) -> tuple[bytes, bytes]:
    """(record key, record value) for ``event`` under the key of ``event.Epoch``.

    Raises ProtocolBug for an epoch we have no key for, and RecordTooLarge (a user fault:
    an instance with huge Meta) when the record would exceed MAX_RECORD_BYTES.
    """
    aead_key = keys.aead_key(keyring, event.Epoch)
    if aead_key is None:
        raise ProtocolBug(f"no key for epoch {event.Epoch} of stream {keyring.StreamDirection}")
    logical = logical_key(event)
    if logical is None:
        raise ProtocolBug(f"event type {type(event).__name__} has no logical key")
    key = keys.record_key(keyring, logical)
    nonce, ciphertext = crypto.seal(
        aead_key, _MSGPACK.encode(event), _aad(keyring, event.Epoch, key), random_bytes
    )
    envelope = Envelope(
        V=ENVELOPE_VERSION,
        Stream=keys.stream_tag(keyring),
        Epoch=event.Epoch,
        Nonce=nonce,
        Ciphertext=ciphertext,
    )
    value = _MSGPACK.encode(envelope)
    if len(value) > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"event {logical!r} is {len(value)} bytes, over {MAX_RECORD_BYTES}")
    return key, value


def decode_record(keyring: StreamKeyring, key: bytes | None, value: bytes | None) -> Decoded:
    """Decode one stream record into an event, an UnknownEvent or a Reject. Never raises."""
    if value is None:
        # A compaction tombstone: ours when cleaning up, or a broker-side attacker's.
        return Reject(RejectReason.TOMBSTONE)
    if len(value) > MAX_RECORD_BYTES:
        return Reject(RejectReason.OVERSIZED, f"{len(value)} bytes")
    if key is None or len(key) != keys.RECORD_KEY_BYTES:
        return Reject(RejectReason.BAD_KEY_HASH, "record key has the wrong length")
    try:
        envelope = _ENVELOPE_DECODER.decode(value)
    except msgspec.DecodeError as exc:
        return Reject(RejectReason.MALFORMED, f"envelope: {exc}")
    if envelope.V != ENVELOPE_VERSION:
        return Reject(RejectReason.UNSUPPORTED_VERSION, f"envelope version {envelope.V}")
    if not crypto.constant_time_equal(envelope.Stream, keys.stream_tag(keyring)):
        return Reject(RejectReason.WRONG_STREAM)
    aead_key = keys.aead_key(keyring, envelope.Epoch)
    if aead_key is None:
        retired = envelope.Epoch < min(keyring.EpochSecrets, default=0)
        reason = RejectReason.RETIRED_EPOCH if retired else RejectReason.UNKNOWN_EPOCH
        return Reject(reason, f"epoch {envelope.Epoch}")
    try:
        plaintext = crypto.open_sealed(
            aead_key, envelope.Nonce, envelope.Ciphertext, _aad(keyring, envelope.Epoch, key)
        )
    except DecryptionFailed as exc:
        return Reject(RejectReason.DECRYPT_FAILED, str(exc))
    return _decode_plaintext(keyring, key, envelope.Epoch, plaintext)


def _decode_plaintext(keyring: StreamKeyring, key: bytes, epoch: int, plaintext: bytes) -> Decoded:
    # Authentic from here on: any problem is an exporter bug or a newer protocol, not an attack.
    try:
        header = _HEADER_DECODER.decode(plaintext)
        if header.Type not in KNOWN_TAGS:
            return UnknownEvent(Type=header.Type, Epoch=header.Epoch, Seq=header.Seq)
        event: Event = _EVENT_DECODER.decode(plaintext)
    except msgspec.DecodeError as exc:
        return Reject(RejectReason.MALFORMED, f"event: {exc}")
    if event.Epoch != epoch:
        return Reject(RejectReason.MALFORMED, "event epoch differs from its envelope")
    logical = logical_key(event)
    if logical is None or not crypto.constant_time_equal(keys.record_key(keyring, logical), key):
        return Reject(RejectReason.BAD_KEY_HASH, "record key does not match the event's key")
    return event
