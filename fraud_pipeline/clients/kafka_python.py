"""The kafka-python backend: the tutorial's client, and the default.

kafka-python 3.0.12 needs reaches into its private attributes, all here
and nowhere else, each marked ``PRIVATE``: transactional calls with a
deadline (``_transaction_manager``, ``_sender``), a stalled rebalance
(``_coordinator``), and its transport's read (``_read_from_sock``), which
drops the bytes that came with the broker's close.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kafka
from kafka import AsyncConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ConfigResource,
    ConfigResourceType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.net import transport as kafka_transport
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from .base import Batch, OnError, OnPartitions
from .errors import (
    ClientError,
    FatalError,
    FencedError,
    NotAuthorizedError,
    RefusedError,
    RetriableError,
    UnknownTopicError,
    authentication_failed,
    cannot_reach,
    tls_failed,
)
from .security import Security
from .types import (
    Acl,
    Broker,
    ClusterInfo,
    GroupInfo,
    GroupMember,
    Headers,
    PartitionInfo,
    Record,
    TopicPartition,
    TopicSpec,
    make_record,
)

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 10000
METADATA_WAIT_MS = 10_000
"""How long a subscribing consumer waits for its topic's metadata before its first poll (see Consumer._await_metadata)."""
WATERMARK_STEP_S = 2.0
"""The longest one attempt at a partition's offsets waits before the metadata are refreshed (Consumer.watermarks)."""
BOOTSTRAP_TIMEOUT_MS = 20000
"""A client's first contact gives up after this long (kafka-python's default: 30 s), with the last attempt's error."""
TRANSACTION_TIMEOUT_MS = 60000

_FENCED = (kerr.ProducerFencedError, kerr.InvalidProducerEpochError)
_NOT_AUTHORIZED = (
    kerr.TransactionalIdAuthorizationFailedError, kerr.TopicAuthorizationFailedError, kerr.GroupAuthorizationFailedError,
    kerr.ClusterAuthorizationFailedError, kerr.AuthorizationError,
)
_FATAL = (kerr.SaslAuthenticationFailedError,)


async def _read_then_close(self: Any) -> None:
    """PRIVATE: kafka-python 3.0.12's ``KafkaTCPTransport._read_from_sock``, but what was read before the connection
    closed reaches the protocol before the transport is aborted.

    Its own version drops those bytes: a broker refusing a password sends its SaslAuthenticate error and closes at once
    (after ``connection.failed.authentication.delay.ms``); on a busy machine both are there at the next read, the
    refusal was lost, and the client retried as after a network fault until its bootstrap timeout ("socket
    disconnected", 21 s where librdkafka said "authentication failed" in 2 s; seen under load, 8 runs in 8).
    """
    while self._read and not self._closed:
        await self._net.wait_read(self._sock)
        data, error = self._sock_recv()
        if data or error is None:
            self.last_read = time.monotonic()
            if self._protocol and self._protocol._sensors:
                self._protocol._sensors.bytes_received.record(len(data))
            try:
                self._protocol.data_received(data)
            except kerr.KafkaProtocolError as exc:
                self.abort(error=exc)
                return
            if error is not None:
                await self._net.sleep(0)  # the responses' waiters run first: a refusal ends the connection as one
        if error is not None:
            if not self._closed:
                self.abort(error=error)
            return


if kafka.__version__.startswith("3.0."):  # the version whose read this mirrors (requirements.txt pins 3.0.12)
    kafka_transport.KafkaTCPTransport._read_from_sock = _read_then_close


def classify(exc: Exception, doing: str = "") -> ClientError:
    """kafka-python's exception as one of the pipeline's kinds."""
    if isinstance(exc, ClientError):
        return exc
    text = f"{doing}: {type(exc).__name__}: {exc}" if doing else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _FENCED):
        return FencedError(text)
    if isinstance(exc, _NOT_AUTHORIZED):
        return NotAuthorizedError(f"not authorized: {text}")
    if isinstance(exc, _FATAL):
        return FatalError(text)
    return RetriableError(text)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, outermost first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def refusal(exc: BaseException, servers: str, user: str | None) -> RefusedError | None:
    """The cluster's refusal of the connection itself (authentication, TLS) in ``exc`` or its causes; None if it is not one."""
    for seen in _chain(exc):
        if isinstance(seen, kerr.SaslAuthenticationFailedError):
            return authentication_failed(user, servers, str(seen))
        # kafka-python words a failed TLS handshake as a KafkaConnectionError("Handshake failed: [SSL: ...] ...")
        if isinstance(seen, ssl.SSLError) or "[SSL:" in str(seen):
            return tls_failed(servers, str(seen))
    return None


class _Refused(kerr.KafkaError):
    """Ends a bootstrap that no retry can mend (raised from inside it by _BootstrapFailures)."""


def _final(error: BaseException) -> bool:
    """A refusal that the next attempt would meet again: the password, or a certificate the client does not trust."""
    return any(isinstance(seen, (kerr.SaslAuthenticationFailedError, ssl.SSLCertVerificationError))
               or "CERTIFICATE_VERIFY_FAILED" in str(seen) for seen in _chain(error))


_BOOTSTRAP_FAILED = "Bootstrap connection to"
"""How kafka-python 3.0 begins the line it logs from its bootstrap coroutine for a failed attempt. Only that
call may be interrupted: raised from its I/O thread's "Connection failed" line, the client hung (seen)."""


class _BootstrapFailures(logging.Handler):
    """PRIVATE: kafka-python retries its bootstrap until ``bootstrap_timeout_ms`` whatever went wrong, then raises
    a bare KafkaTimeoutError; each attempt's error is only logged ("Bootstrap connection to %s failed: %s" in
    kafka.net.manager, the exception among the record's arguments). This keeps them, to say why.

    A wrong password or an untrusted certificate would fail every attempt alike: the handler raises then,
    inside the bootstrap's logging call (kafka-python 3.0 logs it from the bootstrap coroutine, which the
    exception ends), so the client gives up at once instead of after the timeout, as librdkafka does.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        errors = [arg for arg in args if isinstance(arg, BaseException) and not isinstance(arg, (kerr.KafkaTimeoutError, _Refused))]
        self.errors += errors
        if str(record.msg).startswith(_BOOTSTRAP_FAILED) and any(_final(error) for error in errors):
            raise _Refused("the cluster refused the connection")

    def why(self, servers: str, user: str | None, raised: BaseException) -> RefusedError | BaseException:
        """A refusal among the attempts' errors and what was raised (a wrong password shows in some attempts
        only, a hang-up in the others), else the last attempt's error, else what was raised."""
        for error in [*self.errors, raised]:
            refused = refusal(error, servers, user)
            if refused is not None:
                return refused
        return self.errors[-1] if self.errors else raised


def _assigned(member: Mapping[str, Any]) -> tuple[TopicPartition, ...]:
    """A described member's partitions, from its decoded consumer-protocol assignment."""
    assignment = member.get("member_assignment")
    pairs = getattr(assignment, "assigned_partitions", None)
    if pairs is None and isinstance(assignment, Mapping):
        pairs = assignment.get("assigned_partitions")
    found: list[TopicPartition] = []
    for entry in pairs or ():
        topic, partitions = (entry["topic"], entry["partitions"]) if isinstance(entry, Mapping) else entry
        found.extend(TopicPartition(topic, p) for p in partitions)
    return tuple(sorted(found))


def _kafka_tps(tps: Iterable[TopicPartition]) -> list[KafkaTP]:
    return [KafkaTP(tp.topic, tp.partition) for tp in tps]


def _ours(tps: Iterable[KafkaTP]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


class _Listener(AsyncConsumerRebalanceListener):
    """Rebalance callbacks, run by kafka-python 3.0 on its network thread.

    A blocking offset commit is refused there (RuntimeError: "Cannot block on
    net.run() from the IO thread itself"), so the commit a revoke callback asks
    for is deferred: Consumer.commit only records it, and it is awaited here,
    on that thread, before the partitions go.
    """

    def __init__(self, consumer: Consumer, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions) -> None:
        self._consumer = consumer
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        if not revoked:
            return
        deferred = self._consumer.defer_commits()
        try:
            self._on_revoked(_ours(revoked))
        finally:
            self._consumer.stop_deferring()
        if deferred:
            coordinator = self._consumer._consumer._coordinator  # PRIVATE: the awaitable commit behind commit()
            try:
                await coordinator._commit_offsets_sync_async(deferred)
                log.info("committed the offsets of %d partition(s) before the hand-over", len(deferred))
            except kerr.KafkaError as exc:  # the output is out: the new owner may deliver it again
                log.warning("offset commit before the rebalance failed, the batch may be delivered again: %s", exc)

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        self._on_assigned(_ours(assigned))

    async def on_partitions_lost(self, lost: set[KafkaTP]) -> None:
        self._on_lost(_ours(lost))


class Consumer:
    """kafka-python's KafkaConsumer behind the seam."""

    def __init__(self, consumer: KafkaConsumer, max_records: int) -> None:
        self._consumer = consumer
        self._max_records = max_records
        self._tps: dict[KafkaTP, TopicPartition] = {}
        self._deferred: dict[KafkaTP, OffsetAndMetadata] | None = None

    def subscribe(self, topic: str, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions) -> None:
        self._consumer.subscribe([topic], listener=_Listener(self, on_assigned, on_revoked, on_lost))
        self._await_metadata()

    def _await_metadata(self) -> None:
        """The subscribed topic's metadata before the first poll joins the group.

        A group leader that has none yet assigns from an empty snapshot, and
        kafka-python 3.0.12 then joins a second time as soon as the metadata
        come; that second join sometimes never completes (no partitions, every
        poll empty, for good: seen with the detector's stages in one process).
        With the metadata in, a consumer alone in its group joins once.
        """
        try:
            self._refresh_metadata(METADATA_WAIT_MS)
        except kerr.KafkaError as exc:  # the join will fetch them itself, as without this
            log.debug("no metadata before joining the group: %s", exc)

    def _refresh_metadata(self, wait_ms: int) -> None:
        """Ask for the cluster's metadata now and wait for them at most ``wait_ms``; kafka-python's errors raised."""
        consumer: Any = self._consumer
        future = consumer._cluster.request_update()  # PRIVATE: what KafkaConsumer._fetch_all_topic_metadata does
        consumer._net.run(consumer._manager.wait_for, future, wait_ms)  # PRIVATE

    def defer_commits(self) -> dict[KafkaTP, OffsetAndMetadata]:
        """From now on commit() only records its offsets, in the dict returned (see _Listener)."""
        self._deferred = {}
        return self._deferred

    def stop_deferring(self) -> None:
        self._deferred = None

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._consumer.assign(_kafka_tps(offsets))
        for tp, offset in offsets.items():
            self._consumer.seek(KafkaTP(tp.topic, tp.partition), offset)

    def poll(self, timeout_s: float, max_records: int) -> Batch:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except kerr.KafkaError as exc:
            error = classify(exc, "poll")
            if not isinstance(error, RetriableError):
                raise error from exc
            log.warning("%s (retrying)", error)  # a lost broker: the client reconnects on its own
            return {}
        batch: dict[TopicPartition, list[Record]] = {}
        for ktp, records in polled.items():
            tp = self._tps.get(ktp)
            if tp is None:
                tp = self._tps[ktp] = TopicPartition(ktp.topic, ktp.partition)
            batch[tp] = [
                make_record(r.topic, r.partition, r.offset, r.key, r.value, r.headers, r.timestamp) for r in records
            ]
        return batch

    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        kafka_offsets = {KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        if self._deferred is not None:
            self._deferred.update(kafka_offsets)
            return
        try:
            if asynchronous:
                self._consumer.commit_async(kafka_offsets, callback=_commit_answered)  # answered in a later poll
            else:  # kafka-python's own default waits as long as it takes: a coordinator lost held a stop that long
                self._consumer.commit(kafka_offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except kerr.KafkaError as exc:
            self._restart_stalled_rebalance()
            raise classify(exc, "offset commit") from exc

    def _restart_stalled_rebalance(self) -> None:
        """Work around a kafka-python 3.0 stall in the group protocol.

        When a rejoin triggered by a metadata change outlives one poll's timeout,
        kafka-python 3.0.12 finishes the JoinGroup/SyncGroup round trip in the
        background but never marks the member stable again, so every later commit
        fails with RebalanceInProgressError. Asking for a fresh rejoin (what the
        client would do itself on a broker-initiated rebalance) ends the stall.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)  # PRIVATE
        if coordinator is not None and coordinator.rebalance_in_progress() and not coordinator.need_rejoin():
            log.info("consumer group membership stalled mid-rebalance; rejoining")
            coordinator.request_rejoin()

    def committed(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        try:
            return {tp: self._consumer.committed(KafkaTP(tp.topic, tp.partition), timeout_ms=int(timeout_s * 1000))
                    for tp in partitions}
        except kerr.KafkaError as exc:
            raise classify(exc, "committed offsets") from exc

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTP(tp.topic, tp.partition), offset)

    def assignment(self) -> set[TopicPartition]:
        return _ours(self._consumer.assignment())

    def position(self, tp: TopicPartition) -> int:
        try:
            return int(self._consumer.position(KafkaTP(tp.topic, tp.partition)))
        except kerr.KafkaError as exc:
            raise classify(exc, "position") from exc

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause(*_kafka_tps(partitions))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*_kafka_tps(partitions))

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def partitions_for(self, topic: str, timeout_s: float) -> set[int]:
        try:
            found = self._consumer.partitions_for_topic(topic)
        except kerr.KafkaError as exc:
            raise classify(exc, f"metadata of {topic}") from exc
        if not found:
            raise UnknownTopicError(f"topic {topic} does not exist")
        return set(found)

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        """Asked in steps of at most WATERMARK_STEP_S, the metadata refreshed after a step that timed out.

        The deadline is ours: kafka-python's default, its request timeout, is 305 s (a leader moving held a commit
        that long). And kafka-python 3.0.12, when the broker its metadata name as a partition's leader answers with
        an error for that partition (one that leads no more, for instance), asks it again at once, again and again,
        without refreshing them: after broker kills, a detector's state reader, idle since its restore, sent the
        same request for 5 x 30 s when the detector stopped; with fresh metadata the stop took 2.6 s.
        """
        tps = _kafka_tps(partitions)
        steps = max(1, math.ceil(timeout_s / WATERMARK_STEP_S))
        step_ms = int(timeout_s / steps * 1000)
        for last in [False] * (steps - 1) + [True]:
            try:
                first = self._consumer.beginning_offsets(tps, timeout_ms=step_ms)
                end = self._consumer.end_offsets(tps, timeout_ms=step_ms)
            except kerr.KafkaTimeoutError as exc:
                if last:
                    raise classify(exc, "offsets") from exc
                try:
                    self._refresh_metadata(step_ms)
                except kerr.KafkaError as refresh:
                    log.debug("metadata not refreshed: %s", refresh)
            except kerr.KafkaError as exc:
                raise classify(exc, "offsets") from exc
            else:
                return {TopicPartition(tp.topic, tp.partition): (first[tp], end[tp]) for tp in tps}
        raise AssertionError("not reached: the last attempt returns or raises")

    def lag(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        found = {}
        for tp in partitions:
            ktp = KafkaTP(tp.topic, tp.partition)
            high = self._consumer.highwater(ktp)  # from the last fetch response: no request
            if high is not None:
                found[tp] = max(0, high - self._consumer.position(ktp))
        return found

    def offsets_for_times(self, times: Mapping[TopicPartition, int], timeout_s: float) -> dict[TopicPartition, int | None]:
        try:
            found = self._consumer.offsets_for_times({KafkaTP(tp.topic, tp.partition): max(ms, 0) for tp, ms in times.items()},
                                                     timeout_ms=int(timeout_s * 1000))
        except kerr.KafkaError as exc:
            raise classify(exc, "offsets for times") from exc
        return {TopicPartition(tp.topic, tp.partition): None if at is None else at.offset for tp, at in found.items()}

    def close(self) -> None:
        _close_quietly(self._consumer)


class Producer:
    """kafka-python's KafkaProducer behind the seam."""

    reports_each_send = True
    """Each send's future answers on the sender thread: ``settled`` counts them as they come (stage.AtLeastOnce)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self._on_error: OnError = lambda exc: log.error("send failed: %s", exc)
        self._stuck: FencedError | None = None
        """Set when a transactional step got no answer in time: every later one raises it (see ``_transaction_step``)."""
        self._sends = 0
        self._unsettled: dict[int, None] = {}
        """Sequence numbers of the records queued and not yet answered, oldest first; the sender thread settles them."""
        self._lock = threading.Lock()
        self._watch: Callable[[], None] | None = None
        """Called when the next record queued is acknowledged (``watch_next_acknowledgement``)."""

    def on_error(self, handler: OnError) -> None:
        self._on_error = handler

    def _failed(self, exc: Exception) -> None:
        self._on_error(classify(exc, "send"))

    def watch_next_acknowledgement(self, note: Callable[[], None]) -> None:
        self._watch = note

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None, partition: int | None = None,
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers, partition=partition)
        except kerr.KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms
            self._failed(exc)
            return
        sequence = self._sends
        with self._lock:
            self._unsettled[sequence] = None
            self._sends += 1
        # Called on the sender thread, or here if the answer is in already.
        future.add_callback(self._acknowledged, sequence)
        future.add_errback(self._failed_send, sequence)
        if self._watch is not None:
            note, self._watch = self._watch, None
            future.add_callback(lambda _metadata: note())

    def _acknowledged(self, sequence: int, _metadata: object) -> None:
        with self._lock:
            del self._unsettled[sequence]

    def _failed_send(self, sequence: int, exc: Exception) -> None:
        self._failed(exc)
        with self._lock:  # after the failure is heard of: ``settled`` never passes a send before its failure
            del self._unsettled[sequence]

    def sent(self) -> int:
        return self._sends

    def settled(self) -> int:
        with self._lock:
            return next(iter(self._unsettled), self._sends)

    def partition_count(self, topic: str, timeout_s: float) -> int:
        try:
            found = self._producer.partitions_for(topic)  # waits for the topic's metadata
        except kerr.KafkaError as exc:
            raise classify(exc, f"metadata of {topic}") from exc
        if not found:
            raise UnknownTopicError(f"topic {topic} has no partitions")
        return len(found)

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except kerr.KafkaError as exc:
            raise classify(exc, f"sends not acknowledged within {timeout_s}s") from exc

    def init_transactions(self, timeout_s: float) -> None:
        if self._stuck is not None:
            raise self._stuck
        try:
            self._producer.init_transactions()
        except kerr.KafkaError as exc:
            raise classify(exc, "init_transactions") from exc

    def begin_transaction(self) -> None:
        if self._stuck is not None:
            raise self._stuck
        try:
            self._producer.begin_transaction()
        except kerr.KafkaError as exc:
            raise classify(exc, "begin_transaction") from exc

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group: object, timeout_s: float) -> None:
        kafka_offsets = {KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        self._transaction_step("send_offsets", timeout_s, kafka_offsets, group)

    def commit_transaction(self, timeout_s: float) -> None:
        self._transaction_step("commit", timeout_s)

    def abort_transaction(self, timeout_s: float) -> None:
        self._transaction_step("abort", timeout_s)

    def _transaction_step(self, step: str, timeout_s: float, *args: object) -> None:
        """Start a transactional request and wait for its answer at most ``timeout_s``.

        kafka-python 3.0.12's ``send_offsets_to_transaction``, ``commit_transaction``
        and ``abort_transaction`` wait for the coordinator's answer without a
        deadline; when the coordinator's broker dies with the request in flight,
        the answer never comes (seen with kill -9 of a broker). This starts the
        same request the producer's method starts and raises RetriableError at
        the deadline, so the caller can replace the producer.

        A step left unanswered stays queued in kafka-python's transaction
        manager, and may be sent later, inside the next transaction: an
        offset commit of a transaction the stage aborted then commits with the
        next one, past records never routed (seen after a group coordinator's
        broker died). So the producer is set aside: every later transactional
        call raises FencedError, and the stage replaces it.
        """
        if self._stuck is not None:
            raise self._stuck
        manager: Any = self._producer._transaction_manager  # PRIVATE
        start = {"send_offsets": manager.send_offsets_to_transaction, "commit": manager.begin_commit, "abort": manager.begin_abort}
        try:
            result = start[step](*args)
            self._producer._sender.wakeup()  # PRIVATE
            done = result.wait(timeout_ms=timeout_s * 1000)  # raises the coordinator's error, if any
        except kerr.KafkaError as exc:
            raise classify(exc, f"transaction {step}") from exc
        if not done:
            self._stuck = FencedError(f"transaction {step} got no answer from the coordinator in {timeout_s:.0f}s: "
                                      "setting this producer aside")
            raise RetriableError(f"transaction {step}: no answer from the coordinator in {timeout_s:.0f}s")

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued (up to the deadline), then stop the sender thread whatever is left.

        kafka-python 3.0's close raises from its flush at the deadline and never reaches its own force-close: the
        sender thread lived on, retrying a replaced producer's records and transactional requests for ever.
        """
        _close_quietly(self._producer, timeout_s)
        sender: Any = getattr(self._producer, "_sender", None)  # PRIVATE
        if sender is not None and sender.is_alive():
            log.info("closing KafkaProducer: dropping what it could not send in time")
            sender.force_close()


COMMIT_TIMEOUT_MS = 30_000
"""The longest a synchronous offset commit may wait for the group's coordinator."""


def _commit_answered(offsets: object, answer: object) -> None:
    if isinstance(answer, Exception):
        log.warning("offset commit failed, the next one covers it: %s", answer)


def _close_quietly(client: KafkaConsumer | KafkaProducer | KafkaAdminClient, timeout_s: float | None = None) -> None:
    """Close a client; kafka-python 3.0 may log a selector traceback for a socket closed mid-read."""
    selector_log = logging.getLogger("kafka.net.selector")
    level = selector_log.level
    selector_log.setLevel(logging.CRITICAL)
    try:
        client.close() if timeout_s is None else client.close(timeout=timeout_s)
    except kerr.KafkaError as exc:  # records still pending at the deadline: they are given up on
        log.info("closing %s: %s", type(client).__name__, exc)
    finally:
        selector_log.setLevel(level)


class Admin:
    """kafka-python's KafkaAdminClient behind the seam."""

    def __init__(self, admin: KafkaAdminClient) -> None:
        self._admin = admin

    def list_topics(self) -> set[str]:
        try:
            return set(self._admin.list_topics())
        except kerr.KafkaError as exc:
            raise classify(exc, "list topics") from exc

    def broker_count(self) -> int:
        try:
            return len(self._admin.describe_cluster()["brokers"])
        except kerr.KafkaError as exc:
            raise classify(exc, "describe cluster") from exc

    def create_topic(self, spec: TopicSpec, configs: Mapping[str, str]) -> bool:
        new_topic = NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=dict(configs))
        try:
            self._admin.create_topics([new_topic], wait_for_metadata=True)
        except kerr.TopicAlreadyExistsError:
            return False
        except kerr.KafkaError as exc:
            raise classify(exc, f"create topic {spec.name}") from exc
        return True

    def describe_topics(self, names: Iterable[str]) -> dict[str, list[PartitionInfo]]:
        wanted = list(names)
        if not wanted:
            return {}
        try:
            found = self._admin.describe_topics(wanted)
        except kerr.KafkaError as exc:
            raise classify(exc, "describe topics") from exc
        described = {}
        for t in found:
            if t["error_code"] == kerr.TopicAuthorizationFailedError.errno:
                raise NotAuthorizedError(f"not authorized to describe topic {t['name']}", t["name"])
            if t["error_code"] == 0:  # else: it does not exist
                described[t["name"]] = sorted(
                    (PartitionInfo(p["partition_index"], p["leader_id"], tuple(p["replica_nodes"]), tuple(p["isr_nodes"]))
                     for p in t["partitions"]),
                    key=lambda info: info.partition,
                )
        return described

    def topic_configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        present = self.list_topics()
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        try:
            found = self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted], config_filter="all",
            )
        except kerr.KafkaError as exc:
            raise classify(exc, "describe topic configs") from exc
        # kafka-python 3.0 keys the answer by the resource type's lower-case name ("topic")
        topics: dict[str, Any] = next((found[key] for key in ("topic", "TOPIC", ConfigResourceType.TOPIC) if key in found), {})
        return {
            name: {key: str(entry.get("value") if isinstance(entry, dict) else entry) for key, entry in configs.items()}
            for name, configs in topics.items()
        }

    def delete_topics(self, names: Iterable[str]) -> None:
        present = self.list_topics()
        doomed = [n for n in names if n in present]
        if doomed:
            try:
                self._admin.delete_topics(doomed)
            except kerr.KafkaError as exc:
                raise classify(exc, "delete topics") from exc

    def delete_records(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            self._admin.delete_records({KafkaTP(tp.topic, tp.partition): offset for tp, offset in offsets.items()},
                                       timeout_ms=30_000)
        except kerr.KafkaError as exc:
            raise classify(exc, "delete records") from exc

    def create_acls(self, acls: Iterable[Acl]) -> None:
        entries = [
            ACL(acl.principal, "*", ACLOperation[acl.operation], ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType[acl.resource_type], acl.resource_name,
                                ACLResourcePatternType.PREFIXED if acl.prefixed else ACLResourcePatternType.LITERAL))
            for acl in acls
        ]
        try:
            result = self._admin.create_acls(entries)
        except kerr.KafkaError as exc:
            raise classify(exc, "create ACLs") from exc
        for entry, error in result["failed"]:
            raise classify(error, f"create ACL {entry}")

    def describe_cluster(self) -> ClusterInfo:
        try:
            found = self._admin.describe_cluster()
        except kerr.KafkaError as exc:
            raise classify(exc, "describe cluster") from exc
        brokers = tuple(sorted(Broker(b["broker_id"], b["host"], b["port"]) for b in found["brokers"]))
        controller = found.get("controller_id")
        return ClusterInfo(found.get("cluster_id"), controller if controller is not None and controller >= 0 else None, brokers)

    def list_groups(self) -> list[str]:
        try:
            return sorted(g["group_id"] for g in self._admin.list_groups() if g.get("protocol_type") in ("consumer", ""))
        except kerr.KafkaError as exc:
            raise classify(exc, "list groups") from exc

    def describe_groups(self, groups: Iterable[str]) -> list[GroupInfo]:
        wanted = list(groups)
        if not wanted:
            return []
        try:
            found = self._admin.describe_groups(wanted)
        except kerr.KafkaError as exc:
            raise classify(exc, "describe groups") from exc
        described = []
        for group in wanted:
            info = found.get(group) or {}
            members = tuple(
                GroupMember(m.get("member_id", ""), m.get("client_id", ""), m.get("client_host", ""), _assigned(m))
                for m in info.get("members") or ()
            )
            described.append(GroupInfo(group, info.get("group_state") or "Unknown", members))
        return described

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        try:
            found = self._admin.list_group_offsets({group: None})
        except kerr.KafkaError as exc:
            raise classify(exc, f"offsets of group {group}") from exc
        return {TopicPartition(tp.topic, tp.partition): meta.offset
                for tp, meta in (found.get(group) or {}).items() if meta.offset >= 0}

    def close(self) -> None:
        _close_quietly(self._admin)


def security_config(security: Security) -> dict[str, Any]:
    """kafka-python's names for the TLS and SASL settings."""
    config: dict[str, Any] = {"security_protocol": security.protocol}
    if security.uses_sasl:
        assert security.sasl_password is not None  # fraud_pipeline.security checks it
        config.update(sasl_mechanism=security.sasl_mechanism, sasl_plain_username=security.sasl_username,
                      sasl_plain_password=security.sasl_password.reveal())
    if security.uses_tls:
        config.update(ssl_cafile=security.ssl_ca_location, ssl_certfile=security.ssl_certificate_location,
                      ssl_keyfile=security.ssl_key_location, ssl_check_hostname=security.ssl_check_hostname,
                      ssl_password=security.ssl_key_password.reveal() if security.ssl_key_password else None)
    return config


class Backend:
    """Builds kafka-python clients for one cluster."""

    name = "kafka-python"

    def __init__(self, bootstrap_servers: tuple[str, ...], security: Security) -> None:
        self._servers = list(bootstrap_servers)
        self._security = security
        self._connection = {"bootstrap_servers": self._servers, "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
                            **security_config(security)}

    @staticmethod
    @contextmanager
    def _bootstrapping() -> Iterator[_BootstrapFailures]:
        """Collects the bootstrap's failed attempts, and keeps their dozens of log lines from the user: the
        error a failed bootstrap raises says what they said (a bootstrap that succeeds needed none of them)."""
        failures = _BootstrapFailures()
        manager_log = logging.getLogger("kafka.net.manager")
        quiet = [logging.getLogger(name) for name in ("kafka.net.connection", "kafka.net.transport")]
        levels = [logger.level for logger in quiet]
        manager_log.addHandler(failures)
        manager_log.propagate = False
        for logger in quiet:
            logger.setLevel(logging.CRITICAL)
        try:
            yield failures
        finally:
            manager_log.removeHandler(failures)
            manager_log.propagate = True
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)

    def _connect_error(self, exc: Exception, failures: _BootstrapFailures) -> ClientError:
        servers = ",".join(self._servers)
        why = failures.why(servers, self._security.sasl_username, exc)
        if isinstance(why, RefusedError):
            return why
        return cannot_reach(servers, BOOTSTRAP_TIMEOUT_MS / 1000, why, self._security.protocol)

    def producer(self, client_id: str, transactional_id: str | None = None, *, linger_ms: int = 5,
                 each_acknowledgement: bool = False) -> Producer:  # each send's future answers anyway
        extra: dict[str, Any] = (
            # init_transactions waits max_block_ms for a coordinator: 30 s, then the stage tries a new producer.
            # A record gives up within the transaction's timeout (as librdkafka insists), not after the default 120 s:
            # when the transaction coordinator dies, the brokers may answer a produce with "Unable to verify the
            # partition has been added to the transaction" (NotEnoughReplicas) until the batch expires, and
            # only then can the stage abort and go on.
            {"transactional_id": transactional_id, "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS, "max_block_ms": 30000,
             "delivery_timeout_ms": TRANSACTION_TIMEOUT_MS}
            if transactional_id else {}
        )
        with self._bootstrapping() as failures:
            try:
                return Producer(KafkaProducer(
                    **self._connection, client_id=client_id, acks="all", enable_idempotence=True, linger_ms=linger_ms,
                    # Big batches: kafka-python wakes its sender thread for every new batch,
                    # at 16 KiB (about 80 payments) that wake-up was 13 % of the detector's time.
                    batch_size=256 * 1024,
                    **extra,
                ))
            except kerr.KafkaError as exc:
                raise self._connect_error(exc, failures) from None

    def consumer(self, client_id: str, group_id: str | None, *, max_records: int) -> Consumer:
        group: dict[str, Any] = {
            # A member that died without leaving holds its partitions until its
            # session expires: 10 s, not the client's default 45 s.
            "session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": 3000,
        } if group_id else {}
        with self._bootstrapping() as failures:
            try:
                consumer = KafkaConsumer(
                    **self._connection, client_id=client_id, group_id=group_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=max_records, **group,
                )
            except kerr.KafkaError as exc:
                raise self._connect_error(exc, failures) from None
        return Consumer(consumer, max_records)

    def admin(self, client_id: str) -> Admin:
        with self._bootstrapping() as failures:
            try:
                return Admin(KafkaAdminClient(**self._connection, client_id=client_id, request_timeout_ms=10000))
            except kerr.KafkaError as exc:
                raise self._connect_error(exc, failures) from None
