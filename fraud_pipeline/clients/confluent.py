"""The confluent-kafka backend: librdkafka, the C client under confluent-kafka-python and Quix Streams.

librdkafka does its network work on its own threads; Python only queues and
collects. Errors reach Python three ways, each classified here: an exception
from a call (``KafkaException``), an error event in ``consume``, and the
``error_cb`` / ``on_delivery`` callbacks, which run inside ``poll``,
``consume`` and ``flush``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from confluent_kafka import Consumer as RdConsumer
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, Message
from confluent_kafka import Producer as RdProducer
from confluent_kafka import TopicPartition as RdTP
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

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
TRANSACTION_TIMEOUT_MS = 60000
DELIVERY_TIMEOUT_MS = 120000
"""How long a record may wait for a broker before its send fails (kafka-python's default, not librdkafka's 5 minutes)."""
METADATA_TIMEOUT_S = 10.0
"""An admin's first look at the cluster waits this long for a broker to answer."""
ERROR_LOG_INTERVAL_S = 10.0
"""The same client error (a broker down, say) is logged at most this often."""
TXN_WATCHDOG_MARGIN_S = 10.0
"""How long past its own timeout a transactional call may block before its producer is set aside."""
POLL_EVERY = 64
"""Sends between two ``poll(0)`` calls that serve delivery reports."""

_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
_FATAL_CODES = {
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION, KafkaError._INVALID_ARG,
}


def classify(error: KafkaError | KafkaException | Exception, doing: str = "") -> ClientError:
    """librdkafka's error as one of the pipeline's kinds, by its own flags (fatal, retriable, txn_requires_abort)."""
    if isinstance(error, ClientError):
        return error
    err = error.args[0] if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError) else error
    text = f"{doing}: {err}" if doing else str(err)
    if not isinstance(err, KafkaError):
        return RetriableError(text)
    code = err.code()
    if code in _NOT_AUTHORIZED:
        return NotAuthorizedError(f"not authorized: {text}")
    if code in _FATAL_CODES:
        return FatalError(text)
    if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return UnknownTopicError(text)
    if code in _FENCED_CODES or err.fatal():
        return FencedError(text)
    return RetriableError(text)  # retriable(), txn_requires_abort() and the rest: roll back and try again


_NOT_AUTHORIZED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic", KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id", KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
}
_REFUSED_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}
"""librdkafka retries these for ever; a wrong password or certificate does not mend itself: refused, at once."""


class _ErrorLog:
    """``error_cb`` for a client: logs each distinct error at most every ERROR_LOG_INTERVAL_S; keeps a refusal to raise."""

    def __init__(self, client_id: str, servers: str, user: str | None) -> None:
        self._client_id = client_id
        self._servers = servers
        self._user = user
        self._logged: dict[str, float] = {}
        self.on_fatal: OnError | None = None
        self.refused: RefusedError | None = None
        """The cluster refused the connection (authentication, TLS): every later call raises it."""
        self.last = ""
        """The latest error, to say why a cluster could not be reached."""
        self.handshake: RefusedError | None = None
        """A failed TLS handshake, which an admin's first look at the cluster takes as a refusal."""

    def __call__(self, err: KafkaError) -> None:
        code, text = err.code(), err.str()
        if code != KafkaError._ALL_BROKERS_DOWN:  # the count says less than the error before it
            self.last = text
        if code in _REFUSED_CODES and self.refused is None:
            self.refused = (authentication_failed(self._user, self._servers, text)
                            if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)
                            else tls_failed(self._servers, text))
            if self.on_fatal is not None:
                self.on_fatal(self.refused)
        elif "SSL handshake failed" in text and self.handshake is None:
            # Not a refusal for a running client (a broker killed mid-handshake says much the same), but at
            # start-up it is the answer a TLS client gets from a PLAINTEXT listener.
            self.handshake = tls_failed(self._servers, text)
        if err.fatal() and self.on_fatal is not None and code not in _REFUSED_CODES:
            self.on_fatal(classify(err))
        now = time.monotonic()
        if now - self._logged.get(text, -ERROR_LOG_INTERVAL_S) >= ERROR_LOG_INTERVAL_S:
            self._logged[text] = now
            # A lost broker is reported here and retried by librdkafka itself: a warning, not a failure.
            log.warning("%s: %s%s", self._client_id, text, " (fatal)" if err.fatal() else "")

    def check(self, starting: bool = False) -> None:
        """Raise the refusal, if the cluster refused this client (``starting``: a failed TLS handshake too)."""
        if self.refused is not None:
            raise self.refused
        if starting and self.handshake is not None:
            raise self.handshake


def _rd_tps(offsets: Mapping[TopicPartition, int]) -> list[RdTP]:
    return [RdTP(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


def _raise_partition_errors(results: list[RdTP] | None, doing: str) -> None:
    for tp in results or ():
        if tp.error is not None:
            raise classify(tp.error, f"{doing} {tp.topic}[{tp.partition}]")


class Consumer:
    """confluent-kafka's Consumer behind the seam."""

    def __init__(self, consumer: RdConsumer, errors: _ErrorLog, group_id: str | None) -> None:
        self._consumer = consumer
        self._errors = errors
        self._group_id = group_id
        """None: partitions assigned by hand, outside any group (librdkafka still has a placeholder group.id)."""
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._next: dict[TopicPartition, int] = {}
        """Next offset per partition as this consumer has read it, past aborted records and markers (EOF events)."""
        self._assigned: set[TopicPartition] = set()

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def subscribe(self, topic: str, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions) -> None:
        def assigned(consumer: RdConsumer, partitions: list[RdTP]) -> None:
            self._assigned = {self._tp(tp.topic, tp.partition) for tp in partitions}
            on_assigned(set(self._assigned))

        def revoked(consumer: RdConsumer, partitions: list[RdTP]) -> None:
            gone = {self._tp(tp.topic, tp.partition) for tp in partitions}
            self._assigned -= gone
            if gone:
                on_revoked(gone)

        def lost(consumer: RdConsumer, partitions: list[RdTP]) -> None:
            gone = {self._tp(tp.topic, tp.partition) for tp in partitions}
            self._assigned -= gone
            on_lost(gone)

        self._consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._consumer.assign(_rd_tps(offsets))
        self._assigned = set(offsets)
        self._next.update(offsets)

    def poll(self, timeout_s: float, max_records: int) -> Batch:
        try:
            # consume(n, t) waits for n messages or t seconds, whichever comes first: at 1,000 payments/s
            # a 2,000-record batch would hold each payment for the whole timeout. So wait for the first
            # message only, then take whatever else has arrived without waiting.
            first = self._consumer.poll(timeout_s)
            if first is None:
                return {}
            messages: list[Any] = [first, *self._consumer.consume(num_messages=max_records - 1, timeout=0)]
        except KafkaException as exc:
            error = classify(exc, "consume")
            if not isinstance(error, RetriableError):
                raise error from exc
            log.warning("%s (retrying)", error)
            return {}
        batch: dict[TopicPartition, list[Record]] = {}
        ends: list[Any] = []
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends.append(message)
                else:
                    self._consume_error(message, err)
                continue
            tp = self._tp(message.topic(), message.partition())
            records = batch.get(tp)
            if records is None:
                records = batch[tp] = []
            records.append(make_record(tp.topic, tp.partition, message.offset(), message.key(), message.value(),
                                  message.headers() or (), message.timestamp()[1]))
        for tp, records in batch.items():
            self._next[tp] = records[-1].offset + 1
        # The end (for read_committed, the last stable offset), after the records it follows: past a batch's
        # last record may lie only aborted records and transaction markers, which the position passes too.
        for end in ends:
            tp = self._tp(end.topic(), end.partition())
            self._next[tp] = max(self._next.get(tp, 0), end.offset())
        return batch

    def _consume_error(self, message: Any, err: KafkaError) -> None:
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED and self._group_id is None:
            # librdkafka looks up a coordinator for the placeholder group.id it insists on, though this
            # consumer never joins nor commits: a secured cluster refuses that group, which changes nothing here.
            return
        if err.code() in _NOT_AUTHORIZED:
            what = _NOT_AUTHORIZED[err.code()]
            name = (message.topic() if what == "topic" else self._group_id) or ""
            raise NotAuthorizedError(f"not authorized to read {what} {name}: {err.str()}", name)
        error = classify(err, "consume")
        if not isinstance(error, RetriableError):
            raise error
        self._errors(err)

    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        try:
            if asynchronous:  # answered to _commit_answered, from a later poll
                self._consumer.commit(offsets=_rd_tps(offsets), asynchronous=True)
                return
            results = self._consumer.commit(offsets=_rd_tps(offsets), asynchronous=False)
        except KafkaException as exc:
            raise classify(exc, "offset commit") from exc
        _raise_partition_errors(results, "offset commit")

    def committed(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        tps = list(partitions)
        try:
            found = self._consumer.committed([RdTP(tp.topic, tp.partition) for tp in tps], timeout=timeout_s)
        except KafkaException as exc:
            raise classify(exc, "committed offsets") from exc
        _raise_partition_errors(found, "committed offsets")
        return {self._tp(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(RdTP(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            raise classify(exc, f"seek {tp.topic}[{tp.partition}] to {offset}") from exc
        self._next[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def position(self, tp: TopicPartition) -> int:
        return self._next.get(tp, 0)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause([RdTP(tp.topic, tp.partition) for tp in partitions])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume([RdTP(tp.topic, tp.partition) for tp in partitions])

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def partitions_for(self, topic: str, timeout_s: float) -> set[int]:
        return _partitions(self._consumer, topic, timeout_s)

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        found = {}
        try:
            for tp in partitions:
                low, high = self._consumer.get_watermark_offsets(RdTP(tp.topic, tp.partition), timeout=timeout_s, cached=False)
                found[tp] = (low, high)
        except KafkaException as exc:
            raise classify(exc, "watermark offsets") from exc
        return found

    def lag(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        found = {}
        for tp in partitions:
            try:  # cached: the high offset each fetch response brings
                _, high = self._consumer.get_watermark_offsets(RdTP(tp.topic, tp.partition), cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp in self._next:
                found[tp] = max(0, high - self._next[tp])
        return found

    def offsets_for_times(self, times: Mapping[TopicPartition, int], timeout_s: float) -> dict[TopicPartition, int | None]:
        try:
            found = self._consumer.offsets_for_times([RdTP(tp.topic, tp.partition, max(ms, 0)) for tp, ms in times.items()],
                                                     timeout=timeout_s)
        except KafkaException as exc:
            raise classify(exc, "offsets for times") from exc
        return {self._tp(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.info("closing consumer: %s", exc)


def _commit_answered(err: KafkaError | None, partitions: list[RdTP]) -> None:
    """An asynchronous offset commit's answer: a failure is logged (the next commit covers it)."""
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in partitions or () if tp.error is not None]
    if err is not None or failed:
        log.warning("offset commit failed, the next one covers it: %s", err or "; ".join(failed))


def _partitions(client: RdConsumer | RdProducer, topic: str, timeout_s: float) -> set[int]:
    try:
        metadata = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise classify(exc, f"metadata of {topic}") from exc
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise UnknownTopicError(f"topic {topic} does not exist")
    return set(metadata.partitions)


class Producer:
    """confluent-kafka's Producer behind the seam."""

    reports_each_send = False
    """Delivery reports for failures only: a success costs no Python call, so ``settled`` is all or nothing and a
    stage settles its sends by flushing them (stage.FlushedAtLeastOnce; a transaction's commit flushes too)."""

    def __init__(self, config: dict[str, Any], errors: _ErrorLog, *, each_acknowledgement: bool = False) -> None:
        self._on_error: OnError = lambda exc: log.error("send failed: %s", exc)
        errors.on_fatal = self._failed
        self._producer = RdProducer({**config, "error_cb": errors, "on_delivery": self._report_failure,
                                     "delivery.report.only.error": not each_acknowledgement})
        self._each_acknowledgement = each_acknowledgement
        self._sends = 0
        self._counts: dict[str, int] = {}
        self._stuck: FencedError | None = None
        """Set when a transactional call did not return: every later one raises it."""
        self._watch: Callable[[], None] | None = None
        """Called once the next record queued is acknowledged (``watch_next_acknowledgement``)."""

    def on_error(self, handler: OnError) -> None:
        self._on_error = handler

    def watch_next_acknowledgement(self, note: Callable[[], None]) -> None:
        """Its delivery report calls ``note`` (served by ``poll``, as every POLL_EVERY sends and in ``settled``)."""
        if not self._each_acknowledgement:
            raise ValueError("a producer that reports only failures cannot watch an acknowledgement: build it with "
                             "each_acknowledgement")
        self._watch = note

    def _acknowledged(self, note: Callable[[], None], err: KafkaError | None, message: Message) -> None:
        self._report_failure(err, message)
        if err is None:
            note()

    def _failed(self, exc: Exception) -> None:
        self._on_error(exc)

    def _report_failure(self, err: KafkaError | None, message: Message) -> None:
        if err is None:
            return
        if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            self._on_error(NotAuthorizedError(f"not authorized to write topic {message.topic()}: {err.str()}", message.topic() or ""))
        else:
            self._on_error(classify(err, f"send to {message.topic()}"))

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None, partition: int | None = None,
    ) -> None:
        producer: Any = self._producer  # headers: the binding's stubs want str values too
        watch = self._watch
        if watch is not None:  # rare (a traced transaction's first record): the common send pays one test
            self._watch = None
        for _ in range(600):  # a full local queue: serve reports and try again, for at most a minute
            try:
                if watch is not None:
                    producer.produce(topic, value, key, **({} if partition is None else {"partition": partition}),
                                     headers=headers, on_delivery=partial(self._acknowledged, watch))
                elif partition is None:
                    producer.produce(topic, value, key, headers=headers)
                else:
                    producer.produce(topic, value, key, partition, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
            except KafkaException as exc:
                self._on_error(classify(exc, f"send to {topic}"))
                return
        else:
            self._on_error(RetriableError(f"send to {topic}: the local queue stayed full for a minute"))
            return
        self._sends += 1
        if self._sends % POLL_EVERY == 0:
            producer.poll(0)

    def sent(self) -> int:
        return self._sends

    def settled(self) -> int:
        """All of them once none is in flight, else none (failures are reported before they leave the queue)."""
        self._producer.poll(0)
        return self._sends if len(self._producer) == 0 else 0

    def partition_count(self, topic: str, timeout_s: float) -> int:
        count = self._counts.get(topic)
        if count is None:
            count = self._counts[topic] = len(_partitions(self._producer, topic, timeout_s))
        return count

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            left = self._producer.flush() if timeout_s is None else self._producer.flush(timeout_s)
        except KafkaException as exc:
            raise classify(exc, "flush") from exc
        if left:
            raise RetriableError(f"{left} send(s) not acknowledged within {timeout_s}s")

    def _call(self, doing: str, method: Any, *args: object) -> None:
        if self._stuck is not None:
            raise self._stuck
        try:
            method(*args)
        except KafkaException as exc:
            raise classify(exc, doing) from exc

    def _call_within(self, doing: str, timeout_s: float, method: Any, *args: object) -> None:
        """A transactional call that takes ``timeout_s``, watched: librdkafka 2.16 can block in one for ever.

        ``send_offsets_to_transaction`` ignores its timeout while the group's coordinator is unknown
        (librdkafka issues 5456 and 5511, seen here after broker kills). The call runs on a helper thread;
        if it has not returned TXN_WATCHDOG_MARGIN_S after its own timeout, this producer is set aside
        as fenced: the stage starts a new one with the same transactional id, which aborts what this one
        left open. The blocked thread is abandoned (a daemon: it never holds up the process's exit).
        """
        if self._stuck is not None:
            raise self._stuck
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                method(*args)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        helper = threading.Thread(target=run, name=f"txn-{doing}", daemon=True)
        helper.start()
        helper.join(timeout_s + TXN_WATCHDOG_MARGIN_S)
        if helper.is_alive():
            self._stuck = FencedError(f"{doing} did not return within {timeout_s + TXN_WATCHDOG_MARGIN_S:.0f}s, past its "
                                      f"{timeout_s:.0f}s timeout (librdkafka issue 5456): setting this producer aside")
            raise self._stuck
        if outcome:
            error = outcome[0]
            raise (classify(error, doing) if isinstance(error, KafkaException) else error) from error

    def init_transactions(self, timeout_s: float) -> None:
        self._call_within("init_transactions", timeout_s, self._producer.init_transactions, timeout_s)

    def begin_transaction(self) -> None:
        self._call("begin_transaction", self._producer.begin_transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group: object, timeout_s: float) -> None:
        self._call_within("send_offsets_to_transaction", timeout_s, self._producer.send_offsets_to_transaction,
                          _rd_tps(offsets), group, timeout_s)

    def commit_transaction(self, timeout_s: float) -> None:
        self._call_within("commit_transaction", timeout_s, self._producer.commit_transaction, timeout_s)

    def abort_transaction(self, timeout_s: float) -> None:
        self._call_within("abort_transaction", timeout_s, self._producer.abort_transaction, timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout_s if timeout_s is not None else 30.0)
            self._producer.close()
        except (KafkaException, RuntimeError) as exc:
            log.info("closing producer: %s", exc)


class Admin:
    """confluent-kafka's AdminClient behind the seam."""

    def __init__(self, admin: AdminClient, servers: str, errors: _ErrorLog, protocol: str) -> None:
        self._admin = admin
        self._servers = servers
        self._errors = errors
        self._protocol = protocol

    def _metadata(self, topic: str | None = None) -> Any:
        deadline = time.monotonic() + METADATA_TIMEOUT_S
        while True:  # in steps, so that a refusal (a wrong password, a certificate) ends the wait at once
            self._admin.poll(0)  # serves error_cb
            self._errors.check(starting=True)
            try:
                return self._admin.list_topics(topic, timeout=1)
            except KafkaException as exc:
                error = classify(exc, "metadata")
                if not isinstance(error, RetriableError):
                    raise error from exc
                if time.monotonic() >= deadline:
                    self._admin.poll(0)
                    self._errors.check(starting=True)
                    raise cannot_reach(self._servers, METADATA_TIMEOUT_S, self._errors.last or exc, self._protocol) from exc

    def list_topics(self) -> set[str]:
        return set(self._metadata().topics)

    def broker_count(self) -> int:
        return len(self._metadata().brokers)

    def create_topic(self, spec: TopicSpec, configs: Mapping[str, str]) -> bool:
        new_topic = NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                             config=dict(configs))
        try:
            self._admin.create_topics([new_topic], operation_timeout=30, request_timeout=40)[spec.name].result()
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise classify(exc, f"create topic {spec.name}") from exc
        deadline = time.monotonic() + 30
        while not self._has_leaders(spec.name):  # as kafka-python's wait_for_metadata
            if time.monotonic() > deadline:
                raise RetriableError(f"topic {spec.name} was created but has no leaders after 30s")
            time.sleep(0.1)
        return True

    def _has_leaders(self, name: str) -> bool:
        topic = self._metadata().topics.get(name)
        return topic is not None and topic.error is None and bool(topic.partitions) and all(
            p.leader >= 0 for p in topic.partitions.values()
        )

    def describe_topics(self, names: Iterable[str]) -> dict[str, list[PartitionInfo]]:
        names = list(names)
        topics = self._metadata().topics
        for name in names:
            if name not in topics:  # hidden, or missing: asked by name, the cluster says which
                error = self._metadata(name).topics[name].error
                if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise NotAuthorizedError(f"not authorized to describe topic {name}", name)
        return {
            name: [PartitionInfo(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
                   for p in sorted(topics[name].partitions.values(), key=lambda p: p.id)]
            for name in names if name in topics
        }

    def topic_configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        present = self.list_topics()
        wanted = [ConfigResource(ResourceType.TOPIC, n) for n in names if n in present]
        if not wanted:
            return {}
        configs = {}
        for resource, future in self._admin.describe_configs(wanted, request_timeout=30).items():
            try:
                entries = future.result()
            except KafkaException as exc:
                error = classify(exc, f"describe the configs of topic {resource.name}")
                if isinstance(error, UnknownTopicError):  # listed by the metadata: created moments ago, and the
                    error = RetriableError(f"{error} (new: not yet known to every broker)")  # broker asked lags
                raise error from exc
            configs[resource.name] = {key: str(entry.value) for key, entry in entries.items()}
        return configs

    def delete_topics(self, names: Iterable[str]) -> None:
        doomed = [n for n in names if n in self.list_topics()]
        if not doomed:
            return
        for name, future in self._admin.delete_topics(doomed, operation_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                raise classify(exc, f"delete topic {name}") from exc

    def delete_records(self, offsets: Mapping[TopicPartition, int]) -> None:
        asked = [RdTP(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        for tp, future in self._admin.delete_records(asked, operation_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                raise classify(exc, f"delete records of {tp.topic} [{tp.partition}]") from exc

    def create_acls(self, acls: Iterable[Acl]) -> None:
        bindings = [
            AclBinding(ResourceType[acl.resource_type], acl.resource_name,
                       ResourcePatternType.PREFIXED if acl.prefixed else ResourcePatternType.LITERAL,
                       acl.principal, "*", AclOperation[acl.operation], AclPermissionType.ALLOW)
            for acl in acls
        ]
        for binding, future in self._admin.create_acls(bindings, request_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                raise classify(exc, f"create ACL {binding}") from exc

    def describe_cluster(self) -> ClusterInfo:
        try:
            found = self._admin.describe_cluster(request_timeout=10).result()
        except KafkaException as exc:
            raise classify(exc, "describe cluster") from exc
        brokers = tuple(sorted(Broker(n.id, n.host, n.port) for n in found.nodes))
        controller = found.controller.id if found.controller is not None else None
        return ClusterInfo(found.cluster_id, controller, brokers)

    def list_groups(self) -> list[str]:
        try:
            found = self._admin.list_consumer_groups(request_timeout=10).result()
        except KafkaException as exc:
            raise classify(exc, "list groups") from exc
        return sorted(g.group_id for g in found.valid)

    def describe_groups(self, groups: Iterable[str]) -> list[GroupInfo]:
        wanted = list(groups)
        if not wanted:
            return []
        described = []
        for group, future in self._admin.describe_consumer_groups(wanted, request_timeout=10).items():
            try:
                info = future.result()
            except KafkaException as exc:
                raise classify(exc, f"describe group {group}") from exc
            members = tuple(
                GroupMember(m.member_id, m.client_id or "", m.host or "", tuple(sorted(
                    TopicPartition(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else ())
                )))
                for m in info.members
            )
            state = getattr(info.state, "name", str(info.state))
            described.append(GroupInfo(group, _GROUP_STATES.get(state, state.title()), members))
        order = {group: i for i, group in enumerate(wanted)}
        return sorted(described, key=lambda info: order[info.group])

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        request = [ConsumerGroupTopicPartitions(group)]
        try:
            found = self._admin.list_consumer_group_offsets(request, request_timeout=10)[group].result()
        except KafkaException as exc:
            raise classify(exc, f"offsets of group {group}") from exc
        return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in found.topic_partitions or () if tp.offset >= 0}

    def close(self) -> None:
        pass  # AdminClient has nothing to close; it is released with the object


_GROUP_STATES = {"PREPARING_REBALANCING": "PreparingRebalance", "COMPLETING_REBALANCING": "CompletingRebalance"}
"""librdkafka's group state names that do not read as Kafka's own once title-cased (Stable, Empty, Dead)."""


def security_config(security: Security) -> dict[str, Any]:
    """librdkafka's settings: the same names as the client config file's."""
    config: dict[str, Any] = {"security.protocol": security.protocol}
    if security.uses_sasl:
        assert security.sasl_password is not None  # fraud_pipeline.security checks it
        config.update({"sasl.mechanism": security.sasl_mechanism, "sasl.username": security.sasl_username,
                       "sasl.password": security.sasl_password.reveal()})
    if security.uses_tls:
        optional = {"ssl.ca.location": security.ssl_ca_location, "ssl.certificate.location": security.ssl_certificate_location,
                    "ssl.key.location": security.ssl_key_location,
                    "ssl.key.password": security.ssl_key_password.reveal() if security.ssl_key_password else None}
        config.update({key: value for key, value in optional.items() if value is not None})
        config["ssl.endpoint.identification.algorithm"] = "https" if security.ssl_check_hostname else "none"
    return config


class Backend:
    """Builds confluent-kafka clients for one cluster."""

    name = "confluent"

    def __init__(self, bootstrap_servers: tuple[str, ...], security: Security) -> None:
        self._servers = ",".join(bootstrap_servers)
        self._security = security

    def _common(self, client_id: str) -> tuple[dict[str, Any], _ErrorLog]:
        errors = _ErrorLog(client_id, self._servers, self._security.sasl_username)
        return {"bootstrap.servers": self._servers, "client.id": client_id, "error_cb": errors,
                "logger": logging.getLogger("librdkafka"), **security_config(self._security)}, errors

    def producer(self, client_id: str, transactional_id: str | None = None, *, linger_ms: int = 5,
                 each_acknowledgement: bool = False) -> Producer:
        config, errors = self._common(client_id)
        config.update({"acks": "all", "enable.idempotence": True, "linger.ms": linger_ms,
                       "delivery.timeout.ms": DELIVERY_TIMEOUT_MS})
        if transactional_id:
            # librdkafka wants every record's delivery timeout within the transaction's.
            config.update({"transactional.id": transactional_id, "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                           "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS})
        return Producer(config, errors, each_acknowledgement=each_acknowledgement)

    def consumer(self, client_id: str, group_id: str | None, *, max_records: int) -> Consumer:
        config, errors = self._common(client_id)
        config.update({
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        })
        if group_id:
            config.update({"group.id": group_id, "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 3000,
                           "on_commit": _commit_answered})
        else:
            # The binding insists on a group id; a consumer that only assigns never joins it nor commits to it.
            # EOF events tell a reader where a partition ends, aborted records and markers included.
            config.update({"group.id": f"{client_id}-unused", "enable.partition.eof": True})
        return Consumer(RdConsumer(config), errors, group_id)

    def admin(self, client_id: str) -> Admin:
        config, errors = self._common(client_id)
        return Admin(AdminClient(config), self._servers, errors, self._security.protocol)
