"""The pipeline's Kafka I/O on the client seam: clients from settings, topics, the output producer and dead letters.

With stage.py (the consume-process-commit loop) this is all the Kafka I/O of
the pipeline. It speaks only to the seam (fraud_pipeline.clients), so every
script runs on either client library (``--client``), and the rest of the
package is plain Python that receives records and clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from .clients import (
    Admin,
    Backend,
    ClientError,
    Consumer,
    FatalError,
    NotAuthorizedError,
    Producer,
    Record,
    RetriableError,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    backend,
)
from .clients.base import OnPartitions
from .config import Settings, TopicSettings
from .runtime import PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_POLL_RECORDS = 2000
TRANSACTION_STEP_TIMEOUT_S = 20.0
"""The longest one transactional call, or the flush before a commit, may wait for the brokers."""
METADATA_TIMEOUT_S = 30.0
"""The longest a metadata or offset look-up may wait."""


def connect(settings: Settings) -> Backend:
    """The client library chosen in ``settings.client``, for the configured cluster."""
    return backend(settings.client, settings.bootstrap_servers, settings.security)


def make_producer(settings: Settings, client_id: str, transactional_id: str | None = None) -> Producer:
    """An idempotent producer that waits for all in-sync replicas (``acks=all``).

    With ``transactional_id`` it is transactional: a restarted producer with
    the same id aborts what its predecessor left open and fences it.
    """
    try:
        return connect(settings).producer(client_id, transactional_id)
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def retrying(call: Callable[[], T], attempts: int = 5) -> T:
    """``call()``, again after a RetriableError (a broker lost, a controller moving), at most ``attempts`` times.

    For the look-ups a script makes at start-up: one may start while a broker is down.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RetriableError as exc:
            if attempt == attempts:
                raise
            log.warning("%s; trying again", exc)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _existing_partitions(consumer: Consumer, topic: str, settings: Settings) -> set[int]:
    try:
        return retrying(lambda: consumer.partitions_for(topic, METADATA_TIMEOUT_S))
    except UnknownTopicError:
        consumer.close()
        raise PipelineError(f"topic {topic} does not exist (create it with `make topics`)") from None
    except ClientError as exc:
        consumer.close()
        raise PipelineError(f"cannot read the metadata of {topic} from {','.join(settings.bootstrap_servers)}: {exc}") from None


def make_consumer(
    settings: Settings, topic: str, client_id: str, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions,
) -> Consumer:
    """A consumer in ``settings.group_id`` that commits by hand after the output is produced.

    It reads committed records only (``read_committed``), so records of an
    aborted transaction are never seen. A new group starts from the earliest
    offset, so payments sent before the first start of a stage are not skipped.
    """
    consumer = _client(lambda b: b.consumer(client_id, settings.group_id, max_records=MAX_POLL_RECORDS), settings)
    # Load the topic's metadata before joining: a member that joins without it
    # is assigned nothing and may sit idle until the next metadata refresh.
    _existing_partitions(consumer, topic, settings)
    consumer.subscribe(topic, on_assigned, on_revoked, on_lost)
    return consumer


def _client(build: Callable[[Backend], Consumer], settings: Settings) -> Consumer:
    try:
        return build(connect(settings))
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def _groupless_consumer(settings: Settings, client_id: str) -> Consumer:
    """A read_committed consumer outside any group, for partitions assigned by hand: commits nothing."""
    return _client(lambda b: b.consumer(client_id, None, max_records=MAX_POLL_RECORDS), settings)


def make_topic_reader(settings: Settings, topic: str, client_id: str) -> Consumer:
    """A consumer of every partition of ``topic`` from its beginning, outside any group (the rules topic)."""
    consumer = _groupless_consumer(settings, client_id)
    partitions = _existing_partitions(consumer, topic, settings)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    try:
        starts = retrying(lambda: consumer.watermarks(tps, METADATA_TIMEOUT_S))
    except ClientError as exc:
        consumer.close()
        raise PipelineError(f"cannot read the offsets of {topic}: {exc}") from None
    consumer.assign({tp: first for tp, (first, _) in starts.items()})
    return consumer


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


def _admin(settings: Settings) -> Admin:
    try:
        return connect(settings).admin("fraud-pipeline-admin")
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def ensure_topics(settings: Settings, specs: list[TopicSpec], uses: Mapping[str, str] | None = None) -> dict[str, str]:
    """Create the topics that do not exist; return ``{name: "created" | "exists"}``.

    ``uses`` says what the script does with each topic ("read", "write"), for
    the error when the cluster's ACLs hide one from it.

    Admin requests are tried again after a transient failure: a script starts
    while a broker is down.
    """
    try:
        return retrying(lambda: _ensure_topics(settings, specs, uses or {}))
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def _who(settings: Settings) -> str:
    return f"user {settings.security.sasl_username}" if settings.security.uses_sasl else "this client"


def not_authorized(settings: Settings, exc: NotAuthorizedError, operation: str) -> PipelineError:
    """The one line a script stops with when the cluster's ACLs refuse it a topic."""
    return PipelineError(f"not authorized to {operation} topic {exc.resource} ({_who(settings)} at "
                         f"{','.join(settings.bootstrap_servers)}): ask the cluster's admin for the ACL")


def _ensure_topics(settings: Settings, specs: list[TopicSpec], uses: Mapping[str, str]) -> dict[str, str]:
    admin = _admin(settings)
    try:
        existing = admin.list_topics()
        outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:  # a topic this user may not see is not listed: asked by name, the cluster says so
                admin.describe_topics([spec.name for spec in missing])
            except NotAuthorizedError as exc:
                raise not_authorized(settings, exc, uses.get(exc.resource, "describe")) from None
            brokers = admin.broker_count()
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
            try:
                # False: created meanwhile by another process
                outcome[spec.name] = "created" if admin.create_topic(spec, configs) else "exists"
            except NotAuthorizedError:
                raise PipelineError(f"topic {spec.name} does not exist, and {_who(settings)} is not authorized to create it: "
                                    "ask the cluster's admin (`make topics` with the admin's client file)") from None
        return outcome
    except RetriableError:
        raise
    except ClientError as exc:
        raise PipelineError(str(exc)) from None
    finally:
        admin.close()


def prepare_topics(settings: Settings, reads: Iterable[str] = (), writes: Iterable[str] = ()) -> dict[str, str]:
    """Create the missing topics a script reads and writes (logging each), or with ``--no-create-topics`` check they exist."""
    uses = {name: "read" for name in reads}
    for name in writes:
        uses[name] = "read and write" if name in uses else "write"
    specs = pipeline_topics(settings.topics, uses)
    if settings.create_topics:
        outcome = ensure_topics(settings, specs, uses)
        for topic, state in outcome.items():
            if state == "created":
                log.info("created topic %s", topic)
        return outcome
    try:
        present = set(describe_topics(settings, [spec.name for spec in specs]))
    except NotAuthorizedError as exc:
        raise not_authorized(settings, exc, uses.get(exc.resource, "describe")) from None
    missing = [spec.name for spec in specs if spec.name not in present]
    if missing:
        raise PipelineError(f"topic(s) {', '.join(missing)} do not exist: run `make topics`, or drop --no-create-topics")
    return {spec.name: "exists" for spec in specs}


def describe_topics(settings: Settings, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (partitions, replication factor)}`` of the named topics that exist."""
    admin = _admin(settings)
    try:
        found = retrying(lambda: admin.describe_topics(names))
    except NotAuthorizedError:
        raise
    except ClientError as exc:
        raise PipelineError(str(exc)) from None
    finally:
        admin.close()
    return {name: (len(parts), len(parts[0].replicas) if parts else 0) for name, parts in found.items()}


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
) -> Iterator[Record]:
    """Committed records of a topic (or of some of its partitions) within a time or offset span.

    Starts at the first record stamped at or after ``since_ms`` (the
    beginning when None); stops before the first record stamped after
    ``until_ms``, or at ``until_offsets[partition]``, or else at the end the
    topic had when the call began. Uses no consumer group: nothing is committed.
    PipelineError if no record comes for ``stall_timeout_s`` before the end.
    """
    consumer = _groupless_consumer(settings, client_id)
    try:
        known = _existing_partitions(consumer, topic, settings)
        tps = [TopicPartition(topic, p) for p in sorted(known if partitions is None else set(partitions) & known)]
        if not tps:
            return
        marks = retrying(lambda: consumer.watermarks(tps, METADATA_TIMEOUT_S))
        ends = {tp: end for tp, (_, end) in marks.items()}
        if until_offsets is not None:
            ends = {tp: min(ends[tp], until_offsets.get(tp.partition, ends[tp])) for tp in tps}
        elif until_ms is not None:
            ends = _offsets_at(consumer, tps, until_ms + 1, ends)
        starts = _offsets_at(consumer, tps, since_ms, ends) if since_ms is not None else {tp: marks[tp][0] for tp in tps}
        pending = {tp for tp in tps if starts[tp] < ends[tp]}
        if not pending:
            return
        consumer.assign({tp: starts[tp] for tp in sorted(pending, key=lambda tp: tp.partition)})
        progress_at = time.monotonic()
        while pending:
            if time.monotonic() - progress_at > stall_timeout_s:
                stuck = sorted(tp.partition for tp in pending)
                raise PipelineError(f"reading {topic}: no progress in {stall_timeout_s:.0f}s (partitions {stuck})")
            polled = consumer.poll(1.0, MAX_POLL_RECORDS)
            for tp, records in polled.items():
                progress_at = time.monotonic()
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    yield record
            # Done once the position passes the end (also over aborted records and transaction markers).
            done = [tp for tp in pending if consumer.position(tp) >= ends[tp]]
            if done:
                progress_at = time.monotonic()
                pending.difference_update(done)
                consumer.pause(done)
    except ClientError as exc:
        raise PipelineError(f"reading {topic}: {exc}") from None
    finally:
        consumer.close()


def _offsets_at(
    consumer: Consumer, tps: list[TopicPartition], at_ms: int, ends: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Per partition, the first offset stamped at or after ``at_ms``; the end when there is none."""
    found = consumer.offsets_for_times({tp: max(at_ms, 0) for tp in tps}, METADATA_TIMEOUT_S)
    return {tp: ends[tp] if found.get(tp) is None else min(found[tp] or 0, ends[tp]) for tp in tps}


def record_source(record: Record) -> str:
    """``topic[partition]@offset``: where a record came from, for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


class BatchError(Exception):
    """A batch could not be delivered; it is rolled back and read again."""


class Output:
    """The producer a stage writes through, and the first send that failed.

    Sends are asynchronous; ``flush`` waits for them and raises BatchError if
    any failed, so a batch is never committed past a lost record.
    """

    def __init__(self, producer: Producer) -> None:
        self.stalled = False
        """A flush timed out: sends of the producer are still pending, retried by the client."""
        self._failure: Exception | None = None
        self._partitions: dict[str, int] = {}
        self.producer = producer
        self.send = producer.send

    @property
    def producer(self) -> Producer:
        return self._producer

    @producer.setter
    def producer(self, producer: Producer) -> None:
        """Write through ``producer`` from now on; a replaced producer's late failures are ignored."""
        self._producer = producer
        self.stalled = False
        self.send = producer.send
        producer.on_error(lambda exc: self._on_error(producer, exc))

    def partition_for(self, topic: str, source_partition: int) -> int:
        """The partition of ``topic`` that records read from ``source_partition`` go to.

        Input partition modulo the topic's partitions: a key's records, already
        in one input partition, stay together and in order, and the producer
        skips hashing every key (a tenth of the detector's time in kafka-python).
        """
        count = self._partitions.get(topic)
        if count is None:
            try:
                count = self._partitions[topic] = self._producer.partition_count(topic, METADATA_TIMEOUT_S)
            except ClientError as exc:
                raise BatchError(f"topic {topic} has no partitions: {exc}") from exc
        return source_partition % count

    def _on_error(self, producer: Producer, exc: Exception) -> None:
        # A replaced producer's late failures belong to a batch already rolled back.
        if self._failure is None and producer is self._producer:
            self._failure = exc

    def check(self) -> None:
        """Raise BatchError if a send failed since the last check."""
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise BatchError(f"a send failed: {exc}")

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send (at most ``timeout_s``); BatchError if one failed or did not finish."""
        try:
            self._producer.flush(timeout_s)
        except RetriableError as exc:
            self.stalled = True
            raise BatchError(f"sends not acknowledged within {timeout_s}s: {exc}") from exc
        except FatalError:
            raise
        except ClientError as exc:
            raise BatchError(str(exc)) from exc
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

    def send(self, record: Record, reason: str) -> None:
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
