"""All Kafka I/O of the pipeline: clients, topics, the consume loop and dead letters.

Everything else in the package is plain Python that receives records and
clients from here, so it can be tested with mocks or without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .config import Settings, TopicSettings
from .runtime import PipelineError, Summary

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
"""How long one poll may block: also the longest a stop request waits."""
MAX_POLL_RECORDS = 500


def _connect_error(settings: Settings, exc: Exception) -> PipelineError:
    return PipelineError(
        f"cannot reach Kafka at {','.join(settings.bootstrap_servers)}: {exc}"
        " (is the cluster up? `make cluster-up`)"
    )


def make_producer(settings: Settings, client_id: str) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas (``acks=all``)."""
    try:
        return KafkaProducer(
            bootstrap_servers=list(settings.bootstrap_servers),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None


def make_consumer(settings: Settings, topic: str, client_id: str) -> KafkaConsumer:
    """A consumer in ``settings.group_id`` that commits by hand after the output is produced.

    A new group starts from the earliest offset, so payments sent before the
    first start of a stage are not skipped.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=list(settings.bootstrap_servers),
            client_id=client_id,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
        )
    except KafkaError as exc:
        raise _connect_error(settings, exc) from None
    # Load the topic's metadata before joining: a member that joins without it
    # is assigned nothing and may sit idle until the next metadata refresh.
    if not consumer.partitions_for_topic(topic):
        consumer.close()
        raise PipelineError(f"topic {topic} does not exist (create it with `make topics`)")
    consumer.subscribe([topic])
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


def pipeline_topics(topics: TopicSettings, names: Iterable[str] | None = None) -> list[TopicSpec]:
    """Specs of the pipeline's topics (or only those named)."""
    partitions = {
        topics.payments: topics.payments_partitions,
        topics.fraud: topics.routed_partitions,
        topics.legit: topics.routed_partitions,
        topics.dead_letter: topics.dead_letter_partitions,
    }
    wanted = list(partitions) if names is None else list(names)
    return [
        TopicSpec(
            name, partitions[name], topics.replication_factor,
            min(topics.min_insync_replicas, topics.replication_factor),
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
            new_topic = NewTopic(
                spec.name, spec.partitions, spec.replication_factor,
                topic_configs={"min.insync.replicas": str(spec.min_insync_replicas)},
            )
            try:
                admin.create_topics([new_topic], wait_for_metadata=True)
                outcome[spec.name] = "created"
            except TopicAlreadyExistsError:  # created meanwhile by another process
                outcome[spec.name] = "exists"
        return outcome
    finally:
        admin.close()


def describe_topics(settings: Settings, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (partitions, replication factor)}`` of the named topics that exist."""
    admin = KafkaAdminClient(bootstrap_servers=list(settings.bootstrap_servers), client_id="fraud-pipeline-admin")
    try:
        present = set(admin.list_topics())
        found = admin.describe_topics([n for n in names if n in present]) if present else []
        return {t["name"]: (len(t["partitions"]), len(t["partitions"][0]["replica_nodes"])) for t in found}
    finally:
        admin.close()


def record_source(record: ConsumerRecord) -> str:
    """``topic[partition]@offset``: where a record came from, for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


class DeliveryTracker:
    """Remembers the first failed send, so a batch is never committed past a loss."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    def on_error(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc

    def check(self, what: str) -> None:
        """Raise PipelineError if any send failed since the last check."""
        if self.failure is not None:
            exc, self.failure = self.failure, None
            raise PipelineError(f"{what}: a send failed: {exc}")


class DeadLetters:
    """Sends records that cannot be read to the dead-letter topic, unchanged.

    The original key and value are kept byte for byte; headers say why and from
    where: ``error``, ``source.topic``, ``source.partition``, ``source.offset``,
    ``rejected.by`` and ``rejected.at.ms``.
    """

    def __init__(self, producer: KafkaProducer, topic: str, component: str, tracker: DeliveryTracker) -> None:
        self._producer = producer
        self._topic = topic
        self._component = component
        self._tracker = tracker

    def send(self, record: ConsumerRecord, reason: str) -> None:
        log.warning("rejected %s: %s -> %s", record_source(record), reason, self._topic)
        headers = [
            ("error", reason.encode("utf-8")),
            ("source.topic", record.topic.encode("utf-8")),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
            ("rejected.by", self._component.encode("utf-8")),
            ("rejected.at.ms", str(int(time.time() * 1000)).encode()),
        ]
        self._producer.send(self._topic, key=record.key, value=record.value, headers=headers).add_errback(
            self._tracker.on_error
        )


def run_consumer(
    consumer: KafkaConsumer,
    handle: Callable[[ConsumerRecord], None],
    *,
    stop: threading.Event,
    idle_timeout_s: float | None,
    before_commit: Callable[[], None],
) -> str:
    """Poll, handle each record, then commit: at-least-once.

    ``before_commit`` runs after every batch and must make its output durable
    (flush producers and stdout) or raise; offsets are committed only after it
    returns, so a crash re-delivers a batch rather than losing it.
    Returns why the loop ended: ``"idle timeout"`` or ``"stopped"``.
    """
    last_record_at = time.monotonic()
    while not stop.is_set():
        batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        if not batches:
            if idle_timeout_s is not None and time.monotonic() - last_record_at >= idle_timeout_s:
                return "idle timeout"
            continue
        for records in batches.values():
            for record in records:
                handle(record)
        before_commit()
        try:
            consumer.commit()
        except KafkaError as exc:
            # The group moved on (rebalance): the new owner re-reads this batch.
            log.warning("offset commit failed, the batch will be re-delivered: %s", exc)
            _restart_stalled_rebalance(consumer)
        last_record_at = time.monotonic()
    return "stopped"


def close_quietly(client: KafkaConsumer | KafkaProducer) -> None:
    """Close a client; kafka-python 3.0 may log a selector traceback for a socket closed mid-read."""
    selector_log = logging.getLogger("kafka.net.selector")
    level = selector_log.level
    selector_log.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        selector_log.setLevel(level)


def _restart_stalled_rebalance(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0 stall in the group protocol.

    When a rejoin triggered by a metadata change outlives one poll's timeout,
    kafka-python 3.0.12 finishes the JoinGroup/SyncGroup round trip in the
    background but never marks the member stable again, so every later commit
    fails with RebalanceInProgressError. Asking for a fresh rejoin (what the
    client would do itself on a broker-initiated rebalance) ends the stall.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and coordinator.rebalance_in_progress() and not coordinator.need_rejoin():
        log.info("consumer group membership stalled mid-rebalance; rejoining")
        coordinator.request_rejoin()


class RecordHandler(Protocol):
    """What a consuming stage does with each record, and how it makes a batch durable."""

    def handle(self, record: ConsumerRecord) -> None:
        """Process one record (produce, print, or dead-letter it)."""

    def flush(self) -> None:
        """Make everything handled so far durable, or raise PipelineError."""


HandlerFactory = Callable[[KafkaProducer, DeadLetters, DeliveryTracker], RecordHandler]


def run_stage(
    settings: Settings,
    *,
    name: str,
    source_topic: str,
    stop: threading.Event,
    summary: Summary,
    make_handler: HandlerFactory,
) -> int:
    """Run one consuming stage (detector or processor) until stopped or idle.

    Guarantee: at-least-once. A batch's output is flushed before its offsets
    are committed, so a crash can repeat part of a batch but never lose one.
    Returns the exit status: 0 on a clean stop, 1 when a send failed.
    """
    stage_log = logging.getLogger(name)
    if settings.create_topics:
        for topic, state in ensure_topics(settings, pipeline_topics(settings.topics)).items():
            if state == "created":
                stage_log.info("created topic %s", topic)
    producer = make_producer(settings, name)
    try:
        consumer = make_consumer(settings, source_topic, name)
        try:
            tracker = DeliveryTracker()
            dead_letters = DeadLetters(producer, settings.topics.dead_letter, name, tracker)
            handler = make_handler(producer, dead_letters, tracker)
            stage_log.info(
                "reading %s as group %s from %s (at-least-once; dead letters to %s)",
                source_topic, settings.group_id, ",".join(settings.bootstrap_servers), settings.topics.dead_letter,
            )
            try:
                reason = run_consumer(
                    consumer, handler.handle, stop=stop,
                    idle_timeout_s=settings.idle_timeout_s, before_commit=handler.flush,
                )
            except PipelineError as exc:
                stage_log.error("%s; stopping without committing the current batch", exc)
                summary.print("failed")
                return 1
        finally:
            close_quietly(consumer)
    finally:
        close_quietly(producer)
    summary.print(reason)
    return 0
