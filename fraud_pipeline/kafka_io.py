"""Kafka clients, topics, the output producer and dead letters.

With stage.py (the consume-process-commit loop) this is all the Kafka I/O of
the pipeline; the rest of the package is plain Python that receives records
and clients, so it can be tested with mocks or without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from .config import Settings, TopicSettings
from .runtime import PipelineError

log = logging.getLogger(__name__)

MAX_POLL_RECORDS = 2000
SESSION_TIMEOUT_MS = 10000
TRANSACTION_TIMEOUT_MS = 60000
"""A transaction left open by a crashed detector that is not restarted blocks read_committed readers at most this long."""
TRANSACTION_STEP_TIMEOUT_S = 20.0
"""The longest one transactional call may wait for the coordinator (see transaction_step)."""


def _connect_error(settings: Settings, exc: Exception) -> PipelineError:
    return PipelineError(
        f"cannot reach Kafka at {','.join(settings.bootstrap_servers)}: {exc}"
        " (is the cluster up? `make cluster-up`)"
    )


def make_producer(settings: Settings, client_id: str, transactional_id: str | None = None) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas (``acks=all``).

    With ``transactional_id`` it is transactional: a restarted producer with
    the same id aborts what its predecessor left open and fences it.
    """
    extra = {"transactional_id": transactional_id, "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS} if transactional_id else {}
    try:
        return KafkaProducer(
            bootstrap_servers=list(settings.bootstrap_servers),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # Big batches: kafka-python wakes its sender thread for every new batch,
            # at 16 KiB (about 80 payments) that wake-up was 13 % of the detector's time.
            batch_size=256 * 1024,
            **extra,
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None


def make_consumer(
    settings: Settings, topic: str, client_id: str, listener: ConsumerRebalanceListener | None = None
) -> KafkaConsumer:
    """A consumer in ``settings.group_id`` that commits by hand after the output is produced.

    It reads committed records only (``read_committed``), so records of an
    aborted transaction are never seen. A new group starts from the earliest
    offset, so payments sent before the first start of a stage are not skipped.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=list(settings.bootstrap_servers),
            client_id=client_id,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=MAX_POLL_RECORDS,
            # A member that died without leaving holds its partitions until its
            # session expires: 10 s, not the client's default 45 s.
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=3000,
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None
    # Load the topic's metadata before joining: a member that joins without it
    # is assigned nothing and may sit idle until the next metadata refresh.
    if not consumer.partitions_for_topic(topic):
        consumer.close()
        raise PipelineError(f"topic {topic} does not exist (create it with `make topics`)")
    consumer.subscribe([topic], listener=listener)
    return consumer


def _groupless_consumer(settings: Settings, client_id: str) -> KafkaConsumer:
    """A read_committed consumer outside any group, for partitions assigned by hand: commits nothing."""
    try:
        return KafkaConsumer(
            bootstrap_servers=list(settings.bootstrap_servers), client_id=client_id, group_id=None,
            enable_auto_commit=False, isolation_level="read_committed", max_poll_records=MAX_POLL_RECORDS,
            auto_offset_reset="earliest",  # a start removed by retention meanwhile: read what is left
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None


def make_topic_reader(settings: Settings, topic: str, client_id: str) -> KafkaConsumer:
    """A consumer of every partition of ``topic`` from its beginning, outside any group (the rules topic)."""
    consumer = _groupless_consumer(settings, client_id)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        consumer.close()
        raise PipelineError(f"topic {topic} does not exist (create it with `make topics`)")
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    consumer.seek_to_beginning()
    return consumer


@dataclass(frozen=True)
class TopicSpec:
    """How one topic of the pipeline is created."""

    name: str
    """Topic name."""
    partitions: int
    """Number of partitions."""
    replication_factor: int
    """Copies of each partition."""
    min_insync_replicas: int
    """``min.insync.replicas`` topic config."""
    compacted: bool = False
    """``cleanup.policy=compact``: keep the latest record of each key (the rules topic)."""


def pipeline_topics(topics: TopicSettings, names: Iterable[str] | None = None) -> list[TopicSpec]:
    """Specs of the pipeline's topics (or only those named)."""
    partitions = {
        topics.payments: topics.payments_partitions,
        topics.fraud: topics.routed_partitions,
        topics.legit: topics.routed_partitions,
        topics.dead_letter: topics.dead_letter_partitions,
        topics.rules: 1,  # one partition: rule changes apply in the order they were published
        topics.rules_rejected: 1,
    }
    wanted = list(partitions) if names is None else list(names)
    return [
        TopicSpec(
            name, partitions[name], topics.replication_factor,
            min(topics.min_insync_replicas, topics.replication_factor), compacted=name == topics.rules,
        )
        for name in wanted
    ]


def ensure_topics(settings: Settings, specs: list[TopicSpec]) -> dict[str, str]:
    """Create the topics that do not exist; return ``{name: "created" | "exists"}``."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=list(settings.bootstrap_servers), client_id="fraud-pipeline-admin"
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None
    try:
        existing = set(admin.list_topics())
        outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            brokers = len(admin.describe_cluster()["brokers"])
            for spec in missing:
                if spec.replication_factor > brokers:
                    raise PipelineError(
                        f"cannot create topic {spec.name} with replication factor {spec.replication_factor}:"
                        f" the cluster has {brokers} broker(s); set TOPIC_REPLICATION_FACTOR"
                    )
        for spec in missing:
            configs = {"min.insync.replicas": str(spec.min_insync_replicas)}
            if spec.compacted:
                configs["cleanup.policy"] = "compact"
                # Tombstones (removed rules) are kept 10 years, not the default day:
                # a detector started later must still see that the rule was removed.
                configs["delete.retention.ms"] = str(10 * 365 * 24 * 3600 * 1000)
            new_topic = NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=configs)
            try:
                admin.create_topics([new_topic], wait_for_metadata=True)
                outcome[spec.name] = "created"
            except TopicAlreadyExistsError:  # created meanwhile by another process
                outcome[spec.name] = "exists"
        return outcome
    finally:
        admin.close()


def prepare_topics(settings: Settings, names: Iterable[str] | None = None) -> dict[str, str]:
    """Create the pipeline's missing topics (logging each), or with ``--no-create-topics`` check they all exist."""
    specs = pipeline_topics(settings.topics, names)
    if settings.create_topics:
        outcome = ensure_topics(settings, specs)
        for topic, state in outcome.items():
            if state == "created":
                log.info("created topic %s", topic)
        return outcome
    present = set(describe_topics(settings, [spec.name for spec in specs]))
    missing = [spec.name for spec in specs if spec.name not in present]
    if missing:
        raise PipelineError(f"topic(s) {', '.join(missing)} do not exist: run `make topics`, or drop --no-create-topics")
    return {spec.name: "exists" for spec in specs}


def describe_topics(settings: Settings, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (partitions, replication factor)}`` of the named topics that exist."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=list(settings.bootstrap_servers), client_id="fraud-pipeline-admin")
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None
    try:
        present = set(admin.list_topics())
        found = admin.describe_topics([n for n in names if n in present]) if present else []
        return {t["name"]: (len(t["partitions"]), len(t["partitions"][0]["replica_nodes"])) for t in found}
    finally:
        admin.close()


def read_span(
    settings: Settings,
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    until_offsets: Mapping[int, int] | None = None,
    client_id: str = "fraud-pipeline-reader",
    stall_timeout_s: float = 60.0,
) -> Iterator[ConsumerRecord]:
    """Committed records of a topic (or of some of its partitions) within a time or offset span.

    Starts at the first record stamped at or after ``since_ms`` (the
    beginning when None); stops before the first record stamped after
    ``until_ms``, or at ``until_offsets[partition]``, or else at the end the
    topic had when the call began. Uses no consumer group: nothing is committed.
    PipelineError if no record comes for ``stall_timeout_s`` before the end.
    """
    consumer = _groupless_consumer(settings, client_id)
    try:
        known = consumer.partitions_for_topic(topic)
        if not known:
            raise PipelineError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(known if partitions is None else set(partitions) & known)]
        if not tps:
            return
        ends = dict(consumer.end_offsets(tps))
        if until_offsets is not None:
            ends = {tp: min(ends[tp], until_offsets.get(tp.partition, ends[tp])) for tp in tps}
        elif until_ms is not None:
            ends = _offsets_at(consumer, tps, until_ms + 1, ends)
        starts = _offsets_at(consumer, tps, since_ms, ends) if since_ms is not None else consumer.beginning_offsets(tps)
        pending = {tp for tp in tps if starts[tp] < ends[tp]}
        if not pending:
            return
        consumer.assign(sorted(pending, key=lambda tp: tp.partition))
        for tp in pending:
            consumer.seek(tp, starts[tp])
        progress_at = time.monotonic()
        while pending:
            if time.monotonic() - progress_at > stall_timeout_s:
                stuck = sorted(tp.partition for tp in pending)
                raise PipelineError(f"reading {topic}: no progress in {stall_timeout_s:.0f}s (partitions {stuck})")
            polled = consumer.poll(timeout_ms=1000)
            if polled:
                progress_at = time.monotonic()
            for tp, records in polled.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    yield record
            # Done once the position passes the end (also over aborted records and transaction markers).
            for tp in [tp for tp in pending if consumer.position(tp) >= ends[tp]]:
                pending.discard(tp)
                consumer.pause(tp)
    finally:
        close_quietly(consumer)


def _offsets_at(
    consumer: KafkaConsumer, tps: list[TopicPartition], at_ms: int, ends: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Per partition, the first offset stamped at or after ``at_ms``; the end when there is none."""
    found = consumer.offsets_for_times({tp: max(at_ms, 0) for tp in tps})
    return {tp: ends[tp] if found.get(tp) is None else min(found[tp].offset, ends[tp]) for tp in tps}


def record_source(record: ConsumerRecord) -> str:
    """``topic[partition]@offset``: where a record came from, for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


class BatchError(Exception):
    """A batch could not be delivered; it is rolled back and read again."""


class Output:
    """The producer a stage writes through, and the first send that failed.

    Sends are asynchronous; ``flush`` waits for them and raises BatchError if
    any failed, so a batch is never committed past a lost record.
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        self._failure: Exception | None = None
        self._partitions: dict[str, int] = {}

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        producer = self.producer
        try:
            producer.send(topic, key=key, value=value, headers=headers, partition=partition).add_errback(self._on_error, producer)
        except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms
            self._on_error(producer, exc)

    def partition_for(self, topic: str, source_partition: int) -> int:
        """The partition of ``topic`` that records read from ``source_partition`` go to.

        Input partition modulo the topic's partitions: a key's records, already
        in one input partition, stay together and in order, and the producer
        skips hashing every key (a tenth of the detector's time in kafka-python).
        """
        count = self._partitions.get(topic)
        if count is None:
            found = self.producer.partitions_for(topic)  # waits for the topic's metadata, once
            if not found:
                raise BatchError(f"topic {topic} has no partitions")
            count = self._partitions[topic] = len(found)
        return source_partition % count

    def _on_error(self, producer: KafkaProducer, exc: Exception) -> None:
        # A replaced producer's late failures belong to a batch already rolled back.
        if self._failure is None and producer is self.producer:
            self._failure = exc

    def check(self) -> None:
        """Raise BatchError if a send failed since the last check."""
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise BatchError(f"a send failed: {exc}")

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send (at most ``timeout_s``); BatchError if one failed or did not finish."""
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise BatchError(f"sends not acknowledged within {timeout_s}s: {exc}") from exc
        self.check()

    def forget_failures(self) -> None:
        """The batch was rolled back: its failed sends no longer matter."""
        self._failure = None


class DeadLetters:
    """Sends records that cannot be read to the dead-letter topic, unchanged.

    The original key and value are kept byte for byte (the original headers and
    timestamp are not); headers say why and from where: ``error``,
    ``source.topic``, ``source.partition``, ``source.offset``, ``rejected.by``
    and ``rejected.at.ms`` (and ``value.null`` for a record with neither key nor value).
    """

    def __init__(self, output: Output, topic: str, component: str) -> None:
        self._output = output
        self._topic = topic
        self._component = component

    def send(self, record: ConsumerRecord, reason: str) -> None:
        log.warning("rejected %s: %s -> %s", record_source(record), reason, self._topic)
        value = record.value
        headers = []
        if value is None and record.key is None:  # Kafka refuses a record with neither
            value = b""
            headers.append(("value.null", b"true"))
        headers += [
            ("error", reason.encode("utf-8")),
            ("source.topic", record.topic.encode("utf-8")),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
            ("rejected.by", self._component.encode("utf-8")),
            ("rejected.at.ms", str(int(time.time() * 1000)).encode()),
        ]
        self._output.send(self._topic, record.key, value, headers)


def close_quietly(client: KafkaConsumer | KafkaProducer, timeout_s: float | None = None) -> None:
    """Close a client; kafka-python 3.0 may log a selector traceback for a socket closed mid-read."""
    selector_log = logging.getLogger("kafka.net.selector")
    level = selector_log.level
    selector_log.setLevel(logging.CRITICAL)
    try:
        client.close() if timeout_s is None else client.close(timeout=timeout_s)
    except KafkaError as exc:  # records still pending at the deadline: they are given up on
        log.info("closing %s: %s", type(client).__name__, exc)
    finally:
        selector_log.setLevel(level)


def transaction_step(producer: KafkaProducer, step: str, *args: object) -> None:
    """``send_offsets``, ``commit`` or ``abort`` the producer's transaction, waiting at most TRANSACTION_STEP_TIMEOUT_S.

    kafka-python 3.0.12's ``send_offsets_to_transaction``, ``commit_transaction``
    and ``abort_transaction`` wait for the coordinator's answer without a
    deadline; when the coordinator's broker dies with the request in flight,
    the answer never comes (seen with kill -9 of a broker). This starts the
    same request the producer's method starts and raises KafkaTimeoutError at
    the deadline, so the caller can replace the producer.
    """
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None:  # not kafka-python's producer (a test double): use the public calls
        public = {"send_offsets": "send_offsets_to_transaction", "commit": "commit_transaction", "abort": "abort_transaction"}
        getattr(producer, public[step])(*args)
        return
    start = {"send_offsets": manager.send_offsets_to_transaction, "commit": manager.begin_commit, "abort": manager.begin_abort}
    result = start[step](*args)
    producer._sender.wakeup()
    if not result.wait(timeout_ms=TRANSACTION_STEP_TIMEOUT_S * 1000):
        raise KafkaTimeoutError(f"transaction {step}: no answer from the coordinator in {TRANSACTION_STEP_TIMEOUT_S:.0f}s")
