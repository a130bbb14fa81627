"""The establish handshake over the acceptor's bootstrap topic: Kafka around agent.wire.

- ``establish`` (dialer): seal a request to the acceptor's key from the token, send it to
  the bootstrap topic named in the token, wait for the sealed answer addressed to it.
- ``serve_bootstrap`` (acceptor): follow our own bootstrap topic, open each request with the
  peering's key, decide with the pure check, persist the outcome, then answer.

The acceptor commits its decision (token used, keys, ACTIVE, stream topics created) before it
answers, so an "accepted" the dialer sees is never lost by an acceptor crash; a retransmitted
request gets the same answer again (the token remembers the request nonce).
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from agent import crypto, kafka_client, metrics, topics
from agent.kafka_client import KafkaSettings
from agent.peering.records import PeeringRecord, token_record
from agent.peering.tracker import PeeringTracker
from agent.peering_state import EstablishStarted, HandshakeAccepted, new_dialer_peering
from agent.store import Store
from agent.wire import handshake, keys
from agent.wire.errors import HandshakeMessageInvalid, PeerFault
from agent.wire.handshake import Accepted, Refused, SealedRequest, SealedResponse
from agent.wire.keys import Direction
from agent.wire.token import PeeringToken, mark_used

log = logging.getLogger("agent.peering")

BOOTSTRAP_OFFSET_KEY = "bootstrap_offset"


class EstablishError(Exception):
    """Establishing failed for a reason the user must see (refused, timeout, unreachable)."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def keyrings_for(
    root: bytes, peering_id: str, export: Direction, import_: Direction
) -> dict[str, keys.StreamKeyring]:
    return {
        "ExportKeyring": keys.new_keyring(root, peering_id, export),
        "ImportKeyring": keys.new_keyring(root, peering_id, import_),
    }


async def establish(
    tracker: PeeringTracker,
    *,
    local_cluster: str,
    peer_name: str,
    token: PeeringToken,
    kafka: KafkaSettings,
    meta: dict[str, str],
    heartbeat_interval: float,
    delete_grace: float,
    answer_timeout: float,
) -> PeeringRecord:
    """Dialer side of the handshake; returns the ACTIVE record or raises EstablishError."""
    now = tracker.clock()
    private_key = crypto.generate_private_key()
    sealed, pending = handshake.seal_request(
        token, dialer_name=local_cluster, dialer_private_key=private_key, now=now
    )
    status = new_dialer_peering(peer_name, now, heartbeat_interval, delete_grace)
    record = tracker.put(
        PeeringRecord(
            Name=peer_name,
            ID=token.PeeringID,
            Status=status,
            CreatedAt=now,
            Kafka=kafka,
            BootstrapTopic=token.BootstrapTopic,
            PrivateKey=private_key,
            PeerPublicKey=token.AcceptorPublicKey,
            PeerCluster=token.AcceptorName,
            Meta=meta,
        )
    )
    tracker.feed(peer_name, EstablishStarted(now))
    try:
        response = await _exchange(kafka, token.BootstrapTopic, sealed, pending, answer_timeout)
    except EstablishError as error:
        tracker.forget(peer_name)
        metrics.HANDSHAKES.labels(role="dialer", result=error.reason).inc()
        raise
    if not response.Accepted:
        tracker.forget(peer_name)
        reason = response.Reason.value if response.Reason else "refused"
        metrics.HANDSHAKES.labels(role="dialer", result=reason).inc()
        raise EstablishError(
            f"the acceptor refused to establish the peering: {response.Message}",
            status=403,
            reason=reason,
        )
    root = handshake.dialer_stream_root(pending)
    tracker.update(
        peer_name,
        **keyrings_for(root, record.ID, Direction.DIALER_TO_ACCEPTOR, Direction.ACCEPTOR_TO_DIALER),
        PeerCluster=response.AcceptorName or token.AcceptorName,
    )
    tracker.feed(peer_name, HandshakeAccepted(tracker.clock()))
    metrics.HANDSHAKES.labels(role="dialer", result="accepted").inc()
    accepted = tracker.get(peer_name)
    assert accepted is not None  # we just stored it; nothing else runs in between
    return accepted


async def _exchange(
    kafka: KafkaSettings,
    topic: str,
    sealed: SealedRequest,
    pending: handshake.DialerPending,
    answer_timeout: float,
) -> handshake.HandshakeResponse:
    try:
        with anyio.fail_after(answer_timeout):
            # The acceptor's agent creates its bootstrap topic when it starts: an establish
            # issued just before that waits for it (within the timeout) instead of failing.
            # (Polling: Kafka has no notification for a topic being created.)
            while True:
                if topic in await kafka_client.list_topics(kafka):
                    break
                await anyio.sleep(0.5)
            # Read from the end as it was before our request: the answer comes after it.
            start = await kafka_client.end_offset(kafka, topic)
            async with kafka_client.producer(kafka) as producer:
                await kafka_client.send(
                    producer, topic, sealed.PeeringID.encode(), handshake.encode_bootstrap(sealed)
                )
            async for batch in kafka_client.read_batches(
                kafka, topic, start_offset=start, stop_at_end=False, poll_interval=0.2
            ):
                for record in batch.records:
                    response = _response_for(pending, record.value)
                    if response is not None:
                        return response
    except TimeoutError:
        raise EstablishError(
            f"no answer from the acceptor within {answer_timeout:.0f}s on {topic} at "
            f"{','.join(kafka.bootstrap)}: is its agent running?",
            status=504,
            reason="timeout",
        ) from None
    except (kafka_client.KafkaError, OSError) as error:
        raise EstablishError(
            f"cannot reach the acceptor's Kafka at {','.join(kafka.bootstrap)}: {error}",
            status=502,
            reason="unreachable",
        ) from error
    raise AssertionError("unreachable: the bootstrap read only ends by cancellation")


def _response_for(
    pending: handshake.DialerPending, value: bytes | None
) -> handshake.HandshakeResponse | None:
    try:
        message = handshake.decode_bootstrap(value)
    except HandshakeMessageInvalid:
        return None  # someone else's garbage on a shared topic: not our answer
    if not isinstance(message, SealedResponse) or not handshake.is_response_to(pending, message):
        return None
    try:
        return handshake.open_response(pending, message)
    except HandshakeMessageInvalid as error:
        # Addressed to us but not from the acceptor: a forgery. Keep waiting for the real one.
        metrics.HANDSHAKES.labels(role="dialer", result="invalid").inc()
        log.warning("ignored a forged handshake answer: %s", error)
        return None


async def serve_bootstrap(
    tracker: PeeringTracker,
    store: Store,
    *,
    local_cluster: str,
    kafka: KafkaSettings,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Acceptor side: answer establish requests arriving on our bootstrap topic, forever."""
    topic = topics.bootstrap_topic(local_cluster)
    await kafka_client.create_topic(
        kafka, topic, compacted=False, configs=dict(topics.BOOTSTRAP_CONFIG)
    )
    start = store.get_counter(BOOTSTRAP_OFFSET_KEY)
    task_status.started()
    async with kafka_client.producer(kafka) as producer:
        # The poll interval is only how long an idle fetch waits (the broker answers as soon
        # as a request lands): no timed work here, so idle fetches can be rare.
        async for batch in kafka_client.read_batches(
            kafka, topic, start_offset=start, stop_at_end=False, poll_interval=2.0
        ):
            for record in batch.records:
                answer = await _answer(tracker, kafka, local_cluster, record.value)
                if answer is not None:
                    await kafka_client.send(
                        producer,
                        topic,
                        answer.PeeringID.encode(),
                        handshake.encode_bootstrap(answer),
                    )
                store.set_counter(BOOTSTRAP_OFFSET_KEY, record.offset + 1)


async def _answer(
    tracker: PeeringTracker, kafka: KafkaSettings, local_cluster: str, value: bytes | None
) -> SealedResponse | None:
    try:
        message = handshake.decode_bootstrap(value)
    except HandshakeMessageInvalid as error:
        metrics.HANDSHAKES.labels(role="acceptor", result="invalid").inc()
        log.warning("rejected a bootstrap record: %s", error)
        return None
    if isinstance(message, SealedResponse):
        return None  # our own answers (and other acceptors' on a shared topic)
    record = tracker.by_id(message.PeeringID)
    if record is None or record.Token is None:
        # Without the peering's key nobody can be answered securely; a dialer times out.
        metrics.HANDSHAKES.labels(role="acceptor", result="unknown_peering").inc()
        log.warning("establish request for unknown peering %s", message.PeeringID)
        return None
    try:
        opened = handshake.open_request(message, record.PrivateKey)
    except PeerFault as error:
        metrics.HANDSHAKES.labels(role="acceptor", result="invalid").inc()
        log.warning("rejected an establish request for %s: %s", record.Name, error)
        return None
    now = tracker.clock()
    decision = handshake.check_establish_request(
        token_record(record, opened.request.TokenID), opened, now
    )
    if isinstance(decision, Accepted) and not decision.duplicate:
        await _accept(tracker, kafka, record, opened, now)
    if isinstance(decision, Refused):
        result = decision.reason.value
    else:
        # A request seen before (a dialer's retry, or a replay) gets the same answer again
        # but establishes nothing: counted apart, so "accepted" counts peerings.
        result = "duplicate" if decision.duplicate else "accepted"
    metrics.HANDSHAKES.labels(role="acceptor", result=result).inc()
    log.info(
        "establish request answered",
        extra={"peer": record.Name, "peering_id": record.ID, "event": "handshake",
               "result": result},
    )  # fmt: skip
    return handshake.seal_response(
        opened,
        decision,
        acceptor_private_key=record.PrivateKey,
        acceptor_name=local_cluster,
        now=now,
    )


async def _accept(
    tracker: PeeringTracker,
    kafka: KafkaSettings,
    record: PeeringRecord,
    opened: handshake.OpenedRequest,
    now: float,
) -> None:
    assert record.Token is not None
    for direction in Direction:
        await kafka_client.create_topic(
            kafka,
            topics.stream_topic(record.ID, direction),
            compacted=True,
            configs=dict(topics.STREAM_CONFIG),
        )
    root = handshake.acceptor_stream_root(opened, record.Token, record.PrivateKey)
    tracker.update(
        record.Name,
        **keyrings_for(root, record.ID, Direction.ACCEPTOR_TO_DIALER, Direction.DIALER_TO_ACCEPTOR),
        Token=mark_used(record.Token, opened.request.Nonce),
        PeerPublicKey=opened.request.DialerPublicKey,
        PeerCluster=opened.request.DialerName,
    )
    tracker.feed(record.Name, HandshakeAccepted(now))
