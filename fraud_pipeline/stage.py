"""The consume-process-commit loop of the detector and processors, and its guarantees.

The stage polls batches and handles every record (sending routed records and
dead letters through an Output, buffering its printed lines). About every
commit interval (``--commit-interval-ms``, 100 ms by default, or at
``commit_records`` pending records) the Delivery makes what was handled
durable and commits the input offsets: one commit, or one transaction, is
shared by every poll of the interval. If that fails everything since the last
commit is rolled back, the consumer is rewound, and the records are read again.

- AtLeastOnce: flush the producer, print, commit offsets. A crash between the
  flush and the commit repeats what was not committed; nothing is ever skipped.
- ExactlyOnce: one Kafka transaction per commit interval holds the routed
  records and the input offsets (``send_offsets_to_transaction``); a
  read_committed reader sees every input record's output exactly once across
  crashes of the detector and of a broker (tests/chaos). Printed lines are
  outside the transaction: records re-read after a failure may print again, or
  not at all.

A rebalance commits what is pending before it hands partitions over (see
Assignment), so their new owner starts where this member stopped.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from typing import Protocol, TextIO

from .clients import Batch, ClientError, Consumer, FatalError, Producer, Record, RetriableError, TopicPartition
from .config import EXACTLY_ONCE, Settings
from .kafka_io import (
    MAX_POLL_RECORDS,
    METADATA_TIMEOUT_S,
    TRANSACTION_STEP_TIMEOUT_S,
    make_consumer,
    make_producer,
    record_source,
)
from .metrics import Metrics
from .payment import MAX_RECORD_BYTES, InvalidPayment, Payment, decode
from .runtime import PipelineError, Summary, instance_slot

log = logging.getLogger(__name__)
# Dead letters are logged under the logger they always were ("rejected ..."): log lines stay as they were.
_dead_letter_log = logging.getLogger("fraud_pipeline.kafka_io")

POLL_TIMEOUT_S = 0.5
"""How long one poll may block: also the longest a stop request waits."""
MAX_BATCH_RETRIES = 8
"""Failed attempts in a row before the stage gives up (with backoff: about a minute).
A fenced producer (FencedError) is replaced and its records read again: the
coordinator also fences a producer whose transaction it timed out. Two live
instances sharing one transactional id fence each other until one gives up."""


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
        _dead_letter_log.warning("rejected %s: %s -> %s", record_source(record), reason, self._topic)
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


class RecordHandler(Protocol):
    """What a stage does with each record."""

    def begin_batch(self, batch: Batch) -> None:
        """A batch was polled and is about to be handled."""

    def partitions_assigned(self, partitions: set[int]) -> None:
        """The consumer now owns exactly these partitions of the source topic (after a rebalance)."""

    def handle(self, record: Record) -> None:
        """Send and/or buffer the outcome of one record."""

    def emit(self) -> None:
        """What was handled is durable: print its buffered lines and count its outcomes."""

    def discard(self) -> None:
        """What was handled was rolled back: forget its buffered lines."""


class Assignment:
    """The consumer's rebalance callbacks: keeps the handler told of the partitions it owns.

    Before partitions are handed over (``revoked``, inside the poll that
    rebalances) what is pending is committed, while they are still ours, as
    Kafka Streams does: their new owner starts after it. Partitions ``lost``
    without a hand-over (this member's session expired) cannot be committed
    for any more: the loop rolls back what is pending.
    """

    def __init__(self, handler: RecordHandler) -> None:
        self._handler = handler
        self._owned: set[TopicPartition] = set()
        self.before_revoke: Callable[[], None] = lambda: None
        """Set by the loop: commits what is pending."""
        self.lost_partitions: set[TopicPartition] = set()
        """Partitions lost since the loop last looked."""

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self._owned = set(partitions)
        self._handler.partitions_assigned({tp.partition for tp in partitions})

    def revoked(self, partitions: set[TopicPartition]) -> None:
        self.before_revoke()

    def lost(self, partitions: set[TopicPartition]) -> None:
        self.lost_partitions |= partitions
        self._owned -= partitions
        self._handler.partitions_assigned({tp.partition for tp in self._owned})


class LineBuffer:
    """Outcomes and printed lines of the current batch, released only once it is durable."""

    def __init__(self, summary: Summary, quiet: bool, out: TextIO = sys.stdout) -> None:
        self.summary = summary
        self._quiet = quiet
        self._out = out
        self._pending: list[tuple[str, str | None]] = []

    def add(self, outcome: str, line: str | None) -> None:
        self._pending.append((outcome, line))

    def emit(self) -> None:
        for outcome, line in self._pending:
            self.summary.add(outcome)
            if line is not None and not self._quiet:
                self._out.write(line + "\n")
        self._pending.clear()
        self._out.flush()

    def discard(self) -> None:
        self._pending.clear()


def decode_or_reject(
    record: Record, dead_letters: DeadLetters, lines: LineBuffer, *, known_types_only: bool = True,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Payment | None:
    """The record's payment, or None after sending the record to the dead-letter topic."""
    try:
        return decode(record.value, known_types_only=known_types_only, max_bytes=max_bytes)
    except InvalidPayment as exc:
        dead_letters.send(record, str(exc))
        lines.add("dead-lettered", None)
        return None


class Delivery(Protocol):
    """How handled records are made durable and their input offsets committed."""

    name: str

    def begin(self) -> None:
        """Before the first record after a commit or a rollback."""

    def complete(self, consumer: Consumer, offsets: dict[TopicPartition, int], emit: Callable[[], None]) -> None:
        """Make the output durable, call ``emit`` and commit the next ``offsets``; raise BatchError or ClientError to roll back."""

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Undo what can be undone since the last commit and rewind the consumer to read it again."""


class AtLeastOnce:
    """Flush, print, then commit: a crash may repeat what was not committed, never skip it."""

    name = "at-least-once"

    def __init__(self, output: Output) -> None:
        self._output = output

    def begin(self) -> None:
        pass

    def complete(self, consumer: Consumer, offsets: dict[TopicPartition, int], emit: Callable[[], None]) -> None:
        self._output.flush()
        emit()
        try:
            consumer.commit(offsets)
        except FatalError:
            raise
        except ClientError as exc:
            # The output is out: reading these records again would only repeat it, so carry on.
            log.warning("offset commit failed, the batch may be delivered again: %s", exc)

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        self._output.forget_failures()
        _seek(consumer, first_offsets)


class ExactlyOnce:
    """One Kafka transaction per commit interval: routed records and input offsets commit together."""

    name = "exactly-once"

    def __init__(self, output: Output, new_producer: Callable[[], Producer], tally: Counter[str] | None = None) -> None:
        self._output = output
        self._new_producer = new_producer
        self._tally: Counter[str] = Counter() if tally is None else tally
        """Transactions by result: committed, aborted, retried (a new producer)."""
        self._init_transactions()

    def begin(self) -> None:
        self._output.producer.begin_transaction()

    def complete(self, consumer: Consumer, offsets: dict[TopicPartition, int], emit: Callable[[], None]) -> None:
        # Every record must be acknowledged before the commit: kafka-python 3.0
        # can commit a transaction whose sends are still pending, and a send
        # that then fails would be lost.
        self._output.flush(timeout_s=TRANSACTION_STEP_TIMEOUT_S)
        producer = self._output.producer
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata(), TRANSACTION_STEP_TIMEOUT_S)
        producer.commit_transaction(TRANSACTION_STEP_TIMEOUT_S)
        self._tally["committed"] += 1
        emit()

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Abort (or replace the producer), then rewind to the group's committed offsets.

        A commit that timed out on our side may still have completed at the
        coordinator (a new producer's init_transactions waits for it), so the
        records are read again from what the group committed, not from the
        first offsets: what did commit is not committed twice.
        """
        self._tally["aborted"] += 1
        if self._output.stalled:
            # Sends still retried by the client would hold up the next transaction too (seen with kafka-python
            # after the transaction coordinator's broker died): start afresh instead of aborting.
            self._replace_producer("sends were not acknowledged")
        else:
            try:
                self._output.producer.abort_transaction(TRANSACTION_STEP_TIMEOUT_S)
            except FatalError:
                raise
            except ClientError as exc:  # includes a fenced producer
                self._replace_producer(f"abort failed ({exc})")
        self._output.forget_failures()
        committed = consumer.committed(first_offsets, TRANSACTION_STEP_TIMEOUT_S)
        resume = {}
        for tp, first in first_offsets.items():
            offset = committed.get(tp)
            resume[tp] = first if offset is None else offset
        _seek(consumer, resume)

    def _replace_producer(self, why: str) -> None:
        """A new producer with the same transactional id: it aborts whatever the old one left open and fences it."""
        log.warning("%s: starting a new producer with the same transactional id", why)
        self._tally["retried"] += 1
        self._swap_producer()
        self._init_transactions()

    def _swap_producer(self) -> None:
        """Write through a new producer; the old one (fenced, or stuck) is closed aside."""
        old = self._output.producer
        threading.Thread(target=old.close, args=(TRANSACTION_STEP_TIMEOUT_S,), daemon=True).start()
        self._output.producer = self._new_producer()

    def _init_transactions(self, attempts: int = 4) -> None:
        """Register the transactional id, trying again while its coordinator moves (a broker lost at start-up).

        Each new attempt is a new producer: kafka-python keeps waiting for a coordinator
        that died, where a fresh producer looks the coordinator up again.
        FatalError (not authorized) at once; PipelineError when every attempt failed.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._output.producer.init_transactions(TRANSACTION_STEP_TIMEOUT_S)
                return
            except FatalError:
                raise
            except ClientError as exc:
                if attempt == attempts:
                    raise PipelineError(f"cannot start the transactional producer: {exc}") from exc
                log.warning("init_transactions failed (%s); trying again with a new producer", exc)
                self._tally["retried"] += 1
                self._swap_producer()


def _seek(consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp in assigned:  # a partition lost to a rebalance is read again by its new owner
            consumer.seek(tp, offset)


class _Pending:
    """What was handled since the last commit: where each partition started and where it got to."""

    def __init__(self) -> None:
        self.first: dict[TopicPartition, int] = {}
        self.next: dict[TopicPartition, int] = {}
        self.records = 0
        self.opened_at = 0.0

    @property
    def open(self) -> bool:
        return bool(self.first)

    def add(self, batch: Batch) -> None:
        if not self.first:
            self.opened_at = time.monotonic()
        for tp, records in batch.items():
            self.first.setdefault(tp, records[0].offset)
            self.next[tp] = records[-1].offset + 1
            self.records += len(records)

    def clear(self) -> None:
        self.first, self.next, self.records = {}, {}, 0


def run_consumer(
    consumer: Consumer,
    handler: RecordHandler,
    delivery: Delivery,
    *,
    stop: threading.Event,
    idle_timeout_s: float | None,
    assignment: Assignment | None = None,
    commit_interval_s: float = 0.1,
    commit_records: int = 10_000,
    metrics: Metrics | None = None,
) -> str:
    """Poll and handle records until ``stop`` is set or the input is idle; return why it ended.

    Commits about every ``commit_interval_s`` (or at ``commit_records``
    pending records), and once more before returning. Idle means: partitions
    assigned, nothing pending and no record for ``idle_timeout_s``.

    What cannot be delivered is rolled back and read again, with backoff;
    after MAX_BATCH_RETRIES failures in a row, PipelineError. A FatalError
    (authorization, configuration) stops at once.
    """
    last_record_at = time.monotonic()
    failures = 0
    pending = _Pending()
    revoke_failures: list[Exception] = []
    lost: set[TopicPartition] = assignment.lost_partitions if assignment is not None else set()

    def roll_back(exc: Exception) -> None:
        nonlocal failures
        failures += 1
        handler.discard()
        if failures >= MAX_BATCH_RETRIES:
            raise PipelineError(f"giving up after {MAX_BATCH_RETRIES} failed attempts in a row: {exc}") from exc
        log.warning("batch failed (%s: %s); rolling back and reading it again", type(exc).__name__, exc)
        try:
            delivery.roll_back(consumer, pending.first)
        finally:
            pending.clear()
        stop.wait(min(0.5 * 2 ** (failures - 1), 10.0))

    def commit() -> None:
        nonlocal failures
        delivery.complete(consumer, dict(pending.next), handler.emit)
        pending.clear()
        failures = 0

    def commit_before_revoke() -> None:
        if pending.open:
            try:
                commit()
            except Exception as exc:  # raised again after the poll, where the loop rolls back
                revoke_failures.append(exc)

    def _loop() -> str:
        nonlocal last_record_at
        while not stop.is_set():
            wait_s = POLL_TIMEOUT_S
            if pending.open:
                wait_s = max(0.0, min(wait_s, pending.opened_at + commit_interval_s - time.monotonic()))
            try:
                batch = consumer.poll(wait_s, MAX_POLL_RECORDS)
            except FatalError as exc:
                raise PipelineError(str(exc)) from exc
            last_polled_at = time.monotonic()
            if metrics is not None and metrics.lag_due():
                _note_lag(consumer, metrics)
            try:
                if revoke_failures or lost:
                    # A commit before the hand-over failed, or partitions were lost: what is pending is rolled back.
                    failure = revoke_failures[0] if revoke_failures else BatchError(f"partitions lost: {sorted(lost)}")
                    revoke_failures.clear()
                    lost.clear()
                    if pending.open:  # nothing of it may be committed now: read it all again
                        pending.add(batch)
                        if isinstance(failure, (BatchError, ClientError)):
                            raise failure
                        raise BatchError(f"commit before a rebalance failed: {type(failure).__name__}: {failure}") from failure
                if batch:
                    opening = not pending.open
                    pending.add(batch)  # first: a failed begin rolls this batch back too
                    if opening:
                        delivery.begin()
                    handler.begin_batch(batch)
                    for records in batch.values():
                        for record in records:
                            handler.handle(record)
                    handled_at = time.monotonic()
                    if metrics is not None:
                        metrics.batch_seconds.observe(handled_at - last_polled_at)
                    last_record_at = handled_at
                if pending.open and (
                    pending.records >= commit_records or time.monotonic() - pending.opened_at >= commit_interval_s
                ):
                    commit()
            except FatalError as exc:
                raise PipelineError(str(exc)) from exc
            except (BatchError, ClientError) as exc:
                roll_back(exc)
                last_record_at = time.monotonic()
                continue
            if not batch and not pending.open:
                if not consumer.assignment():
                    # Waiting for partitions (e.g. for a crashed member's session to expire) is not idleness.
                    last_record_at = time.monotonic()
                elif idle_timeout_s is not None and time.monotonic() - last_record_at >= idle_timeout_s:
                    return "idle timeout"
        if pending.open:  # a stop request: commit what was handled
            try:
                commit()
            except FatalError as exc:
                raise PipelineError(str(exc)) from exc
            except (BatchError, ClientError) as exc:
                log.warning("the last commit failed (%s); its records will be read again at the next start", exc)
                handler.discard()
                delivery.roll_back(consumer, pending.first)
        return "stopped"

    if assignment is not None:
        assignment.before_revoke = commit_before_revoke
    try:
        return _loop()
    finally:
        if assignment is not None:
            # Closing the consumer revokes its partitions: what is still pending then
            # (a failed last commit, a give-up) must not be committed on the way out.
            assignment.before_revoke = lambda: None


def _note_lag(consumer: Consumer, metrics: Metrics) -> None:
    """Each assigned partition's end offset minus this consumer's position, as the client last learnt it."""
    metrics.lag = {(tp.topic, tp.partition): lag for tp, lag in consumer.lag(consumer.assignment()).items()}


HandlerFactory = Callable[[Output, DeadLetters, LineBuffer], RecordHandler]


def run_stage(
    settings: Settings,
    *,
    name: str,
    source_topic: str,
    stop: threading.Event,
    summary: Summary,
    make_handler: HandlerFactory,
    transactional: bool = False,
    metrics: Metrics | None = None,
) -> int:
    """Run one consuming stage (detector or processor) until stopped or idle; return the exit status.

    The caller prepares the topics (topics.prepare_topics) first.

    ``transactional`` stages follow ``settings.guarantee``; the others are
    at-least-once. 0 on a clean stop, 1 on a failure (nothing committed past it).
    """
    stage_log = logging.getLogger(name)
    if metrics is not None:
        metrics.outcomes = summary.counts
    interval_ms = settings.commit_interval_ms
    exactly_once = transactional and settings.guarantee == EXACTLY_ONCE
    needs_slot = exactly_once and settings.transactional_id is None
    with instance_slot(settings.group_id or name) if needs_slot else nullcontext("") as slot:
        transactional_id = (settings.transactional_id or f"{settings.group_id}-{slot}") if exactly_once else None
        output = Output(make_producer(settings, name, transactional_id))
        try:
            buffer = LineBuffer(summary, settings.quiet)
            handler = make_handler(output, DeadLetters(output, settings.topics.dead_letter, name), buffer)
            assignment = Assignment(handler)
            consumer = make_consumer(settings, source_topic, name, assignment.assigned, assignment.revoked, assignment.lost)
            # What exists now (modules, clients, rules) lives until the end: keep it out of every
            # garbage collection, which then only walks the short-lived per-record objects.
            gc.collect()
            gc.freeze()
            try:
                try:
                    delivery: Delivery = (
                        ExactlyOnce(output, lambda: make_producer(settings, name, transactional_id),
                                    metrics.transactions if metrics is not None else None)
                        if exactly_once else AtLeastOnce(output)
                    )
                except FatalError as exc:
                    raise PipelineError(f"transactions are not allowed for this detector: {exc}") from exc
                stage_log.info(
                    "reading %s as group %s from %s (%s) with %s; %s%s, commit every %d ms; dead letters to %s",
                    source_topic, settings.group_id, ",".join(settings.bootstrap_servers), settings.security.describe(),
                    settings.client, delivery.name,
                    f" (transactional id {transactional_id})" if transactional_id else "", interval_ms,
                    settings.topics.dead_letter,
                )
                reason = run_consumer(
                    consumer, handler, delivery, stop=stop, idle_timeout_s=settings.idle_timeout_s, assignment=assignment,
                    commit_interval_s=interval_ms / 1000, commit_records=settings.commit_records,
                    metrics=metrics if metrics is not None and metrics.enabled else None,
                )
            except PipelineError as exc:
                stage_log.error("%s; stopping without committing the current batch", exc)
                summary.print("failed")
                return 1
            finally:
                _close_within(consumer.close, "consumer")
        finally:
            _close_within(output.producer.close, "producer")
    summary.print(reason)
    return 0


CLOSE_TIMEOUT_S = 30.0
"""The longest a client's close may hold up the exit: what it does then (leave the group) loses nothing."""


def _close_within(close: Callable[[], None], what: str) -> None:
    """Close a client, giving up waiting after CLOSE_TIMEOUT_S.

    Everything handled is committed before the close; librdkafka's consumer
    close can block on a group coordinator that moved (seen after a broker
    restart), and a stop request must still end the process.
    """
    closer = threading.Thread(target=close, name=f"close-{what}", daemon=True)
    closer.start()
    closer.join(CLOSE_TIMEOUT_S)
    if closer.is_alive():
        log.warning("the %s did not close within %.0fs; exiting without waiting for it", what, CLOSE_TIMEOUT_S)
