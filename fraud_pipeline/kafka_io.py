"""The pipeline's Kafka clients on the client seam: clients from settings, retries at start-up, and reading a span of a topic.

With topics.py (creating and checking the topics) and stage.py (the
consume-process-commit loop, its output producer and dead letters) this is all
the Kafka I/O of the pipeline. It speaks only to the seam
(fraud_pipeline.clients), so every script runs on either client library
(``--client``), and the rest of the package is plain Python that receives
records and clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from .clients import (
    Backend,
    ClientError,
    Consumer,
    Producer,
    Record,
    RetriableError,
    TopicPartition,
    UnknownTopicError,
    backend,
)
from .clients.base import OnPartitions
from .config import DeliverySettings, Settings, require
from .errors import PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_POLL_RECORDS = 2000
TRANSACTION_STEP_TIMEOUT_S = 20.0
"""The longest one transactional call, or the flush before a commit, may wait for the brokers."""
METADATA_TIMEOUT_S = 30.0
"""The longest a metadata or offset look-up may wait."""


def connect(settings: Settings) -> Backend:
    """The client library chosen in ``settings.connection.client``, for the configured cluster."""
    connection = settings.connection
    return backend(connection.client, connection.bootstrap_servers, connection.security)


def make_producer(settings: Settings, client_id: str, transactional_id: str | None = None) -> Producer:
    """An idempotent producer that waits for all in-sync replicas (``acks=all``).

    With ``transactional_id`` it is transactional: a restarted producer with
    the same id aborts what its predecessor left open and fences it. Its
    ``linger.ms`` is the delivery section's (the detector's), else 5; a
    detector that traces its transactions hears of each acknowledgement.
    """
    delivery = settings.delivery if settings.delivery is not None else DeliverySettings()
    try:
        return connect(settings).producer(client_id, transactional_id, linger_ms=delivery.linger_ms,
                                          each_acknowledgement=delivery.trace_transactions)
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
        raise PipelineError(f"cannot read the metadata of {topic} from {','.join(settings.connection.bootstrap_servers)}: {exc}") from None


def make_consumer(
    settings: Settings, topic: str, client_id: str, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions,
) -> Consumer:
    """A consumer in the group of ``settings.consumer`` that commits by hand after the output is produced.

    It reads committed records only (``read_committed``), so records of an
    aborted transaction are never seen. A new group starts from the earliest
    offset, so payments sent before the first start of a stage are not skipped.
    """
    group_id = require(settings.consumer, "consumer").group_id
    consumer = _client(lambda b: b.consumer(client_id, group_id, max_records=MAX_POLL_RECORDS), settings)
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


def make_groupless_consumer(settings: Settings, client_id: str) -> Consumer:
    """A read_committed consumer outside any group, for partitions assigned by hand: commits nothing."""
    return _client(lambda b: b.consumer(client_id, None, max_records=MAX_POLL_RECORDS), settings)


def make_topic_reader(settings: Settings, topic: str, client_id: str, *more: str) -> Consumer:
    """A consumer of every partition of ``topic`` (and of the ``more`` topics) from its beginning, outside any group
    (the rules topic; the lists and their definitions)."""
    consumer = make_groupless_consumer(settings, client_id)
    tps = [TopicPartition(name, p) for name in (topic, *more) for p in sorted(_existing_partitions(consumer, name, settings))]
    try:
        starts = retrying(lambda: consumer.watermarks(tps, METADATA_TIMEOUT_S))
    except ClientError as exc:
        consumer.close()
        raise PipelineError(f"cannot read the offsets of {', '.join((topic, *more))}: {exc}") from None
    consumer.assign({tp: first for tp, (first, _) in starts.items()})
    return consumer

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
    consumer = make_groupless_consumer(settings, client_id)
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


def read_latest(
    settings: Settings, topic: str, parse: Callable[[Record], T], refused: Callable[[Record, Exception], None],
    errors: tuple[type[Exception], ...], *, client_id: str,
) -> dict[str, T]:
    """A compacted topic as compaction leaves it: per key, its last record, read by ``parse`` (a tombstone removes the
    key). A record ``parse`` refuses with one of ``errors`` goes to ``refused`` and changes nothing."""
    latest: dict[str, T] = {}
    for record in read_span(settings, topic, client_id=client_id):
        key = (record.key or b"").decode("utf-8", "replace")
        if record.value is None:
            latest.pop(key, None)
            continue
        try:
            latest[key] = parse(record)
        except errors as exc:
            refused(record, exc)
    return latest


def record_source(record: Record) -> str:
    """``topic[partition]@offset``: where a record came from, for logs."""
    return f"{record.topic}[{record.partition}]@{record.offset}"
