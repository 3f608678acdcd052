"""The consume-process-commit loop of the detector and processors, and its guarantees.

Each poll returns a batch; the stage handles every record of it (sending
routed records and dead letters through an Output, buffering its printed
lines), then the Delivery makes the batch durable and commits the input
offsets. If that fails the batch is rolled back, the consumer is rewound to
the batch's first offsets, and the batch is read again.

- AtLeastOnce: flush the producer, print, commit offsets. A crash between the
  flush and the commit repeats part of a batch; nothing is ever skipped.
- ExactlyOnce: one Kafka transaction per batch holds the routed records and
  the input offsets (``send_offsets_to_transaction``); a read_committed reader
  sees every input record's output exactly once across crashes of the
  detector and of a broker (tests/chaos). Printed lines are outside the
  transaction: a batch re-read after a failure may print again, or not at all.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Protocol, TextIO

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TransactionalIdAuthorizationFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from .config import EXACTLY_ONCE, Settings
from .kafka_io import (
    TRANSACTION_STEP_TIMEOUT_S,
    BatchError,
    DeadLetters,
    Output,
    close_quietly,
    make_consumer,
    make_producer,
    transaction_step,
)
from .payment import MAX_RECORD_BYTES, InvalidPayment, Payment, decode
from .runtime import PipelineError, Summary, instance_slot

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
"""How long one poll may block: also the longest a stop request waits."""
MAX_BATCH_RETRIES = 8
"""Failed attempts at one batch before the stage gives up (with backoff: about a minute)."""
FATAL_TRANSACTION_ERRORS = (TransactionalIdAuthorizationFailedError,)
"""Errors no retry can mend. A fenced producer (ProducerFencedError,
InvalidProducerEpochError) is replaced and its batch read again: the
coordinator also fences a producer whose transaction it timed out. Two live
instances sharing one transactional id fence each other until one gives up
after MAX_BATCH_RETRIES."""


class RecordHandler(Protocol):
    """What a stage does with each record of a batch."""

    def begin_batch(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """A batch was polled and is about to be handled (before its transaction begins)."""

    def partitions_assigned(self, partitions: set[int]) -> None:
        """The consumer now owns exactly these partitions of the source topic (after a rebalance)."""

    def handle(self, record: ConsumerRecord) -> None:
        """Send and/or buffer the outcome of one record."""

    def emit(self) -> None:
        """The batch is durable: print its buffered lines and count its outcomes."""

    def discard(self) -> None:
        """The batch was rolled back: forget its buffered lines."""


class _AssignmentListener(ConsumerRebalanceListener):
    """Tells the handler which partitions it owns after each rebalance."""

    def __init__(self, handler: RecordHandler) -> None:
        self._handler = handler
        self._owned: set[int] = set()

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass  # the assignment that follows says what is still owned

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owned = {tp.partition for tp in assigned}
        self._handler.partitions_assigned(set(self._owned))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._owned -= {tp.partition for tp in lost}
        self._handler.partitions_assigned(set(self._owned))


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
    record: ConsumerRecord, dead_letters: DeadLetters, lines: LineBuffer, *, known_types_only: bool = True,
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
    """How a batch is made durable and its input offsets committed."""

    name: str

    def begin(self) -> None:
        """Before the first record of a batch."""

    def complete(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata], emit: Callable[[], None]) -> None:
        """Make the batch durable, call ``emit`` and commit ``offsets``; raise BatchError or KafkaError to roll back."""

    def roll_back(self, consumer: KafkaConsumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Undo what can be undone of a failed batch and rewind the consumer to read it again."""


class AtLeastOnce:
    """Flush, print, then commit: a crash may repeat part of a batch, never skip one."""

    name = "at-least-once"

    def __init__(self, output: Output) -> None:
        self._output = output

    def begin(self) -> None:
        pass

    def complete(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata], emit: Callable[[], None]) -> None:
        self._output.flush()
        emit()
        try:
            consumer.commit(offsets)
        except KafkaError as exc:
            # The output is out: re-reading this batch would only repeat it, so carry on.
            log.warning("offset commit failed, the batch may be delivered again: %s", exc)
            _restart_stalled_rebalance(consumer)

    def roll_back(self, consumer: KafkaConsumer, first_offsets: dict[TopicPartition, int]) -> None:
        self._output.forget_failures()
        _seek(consumer, first_offsets)


class ExactlyOnce:
    """One Kafka transaction per batch: routed records and input offsets commit together."""

    name = "exactly-once"

    def __init__(self, output: Output, new_producer: Callable[[], KafkaProducer]) -> None:
        self._output = output
        self._new_producer = new_producer
        self._output.producer.init_transactions()

    def begin(self) -> None:
        self._output.producer.begin_transaction()

    def complete(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata], emit: Callable[[], None]) -> None:
        # Every record of the batch must be acknowledged before the commit:
        # kafka-python 3.0 can commit a transaction whose sends are still
        # pending, and a send that then fails would be lost.
        self._output.flush(timeout_s=TRANSACTION_STEP_TIMEOUT_S)
        producer = self._output.producer
        transaction_step(producer, "send_offsets", offsets, consumer.group_metadata())
        transaction_step(producer, "commit")
        emit()

    def roll_back(self, consumer: KafkaConsumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Abort (or replace the producer), then rewind to the group's committed offsets.

        A commit that timed out on our side may still have completed at the
        coordinator (a new producer's init_transactions waits for it), so the
        batch is re-read from what the group committed, not from its first
        offsets: a batch that did commit is not committed twice.
        """
        try:
            transaction_step(self._output.producer, "abort")
        except FATAL_TRANSACTION_ERRORS:
            raise
        except KafkaError as exc:  # includes a fenced producer
            log.warning("abort failed (%s): starting a new producer with the same transactional id", exc)
            # A new producer with the same id aborts whatever the old one left open
            # and fences the old one, which is closed in the background.
            old = self._output.producer
            threading.Thread(target=close_quietly, args=(old, TRANSACTION_STEP_TIMEOUT_S), daemon=True).start()
            self._output.producer = self._new_producer()
            try:
                self._output.producer.init_transactions()
            except KafkaError as init_exc:
                raise PipelineError(f"cannot start a new transactional producer: {init_exc}") from init_exc
        self._output.forget_failures()
        resume = {}
        for tp, first in first_offsets.items():
            committed = consumer.committed(tp)
            resume[tp] = first if committed is None else committed
        _seek(consumer, resume)


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


def _seek(consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp in assigned:  # a partition lost to a rebalance is re-read by its new owner
            consumer.seek(tp, offset)


def run_consumer(
    consumer: KafkaConsumer,
    handler: RecordHandler,
    delivery: Delivery,
    *,
    stop: threading.Event,
    idle_timeout_s: float | None,
) -> str:
    """Poll and process batches until ``stop`` is set or the input is idle; return why it ended.

    Idle means: partitions assigned and no record for ``idle_timeout_s``.

    A batch that cannot be delivered is rolled back and read again, with
    backoff; after MAX_BATCH_RETRIES failures in a row, PipelineError.
    """
    last_record_at = time.monotonic()
    failures = 0
    while not stop.is_set():
        batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        if not batches:
            if not consumer.assignment():
                # Waiting for partitions (e.g. for a crashed member's session to expire) is not idleness.
                last_record_at = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_record_at >= idle_timeout_s:
                return "idle timeout"
            continue
        first_offsets = {tp: records[0].offset for tp, records in batches.items()}
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batches.items()}
        try:
            handler.begin_batch(batches)
            delivery.begin()
            for records in batches.values():
                for record in records:
                    handler.handle(record)
            delivery.complete(consumer, offsets, handler.emit)
            failures = 0
        except FATAL_TRANSACTION_ERRORS as exc:
            raise PipelineError(f"transactions are not allowed for this detector: {exc}") from exc
        except (BatchError, KafkaError) as exc:
            failures += 1
            handler.discard()
            if failures >= MAX_BATCH_RETRIES:
                raise PipelineError(f"giving up after {MAX_BATCH_RETRIES} failed attempts at one batch: {exc}") from exc
            log.warning("batch failed (%s: %s); rolling back and reading it again", type(exc).__name__, exc)
            delivery.roll_back(consumer, first_offsets)
            stop.wait(min(0.5 * 2 ** (failures - 1), 10.0))
        last_record_at = time.monotonic()
    return "stopped"


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
) -> int:
    """Run one consuming stage (detector or processor) until stopped or idle; return the exit status.

    The caller prepares the topics (kafka_io.prepare_topics) first.

    ``transactional`` stages follow ``settings.guarantee``; the others are
    at-least-once. 0 on a clean stop, 1 on a failure (nothing committed past it).
    """
    stage_log = logging.getLogger(name)
    exactly_once = transactional and settings.guarantee == EXACTLY_ONCE
    needs_slot = exactly_once and settings.transactional_id is None
    with instance_slot(settings.group_id or name) if needs_slot else nullcontext("") as slot:
        transactional_id = (settings.transactional_id or f"{settings.group_id}-{slot}") if exactly_once else None
        output = Output(make_producer(settings, name, transactional_id))
        try:
            buffer = LineBuffer(summary, settings.quiet)
            handler = make_handler(output, DeadLetters(output, settings.topics.dead_letter, name), buffer)
            consumer = make_consumer(settings, source_topic, name, _AssignmentListener(handler))
            # What exists now (modules, clients, rules) lives until the end: keep it out of every
            # garbage collection, which then only walks the short-lived per-record objects.
            gc.collect()
            gc.freeze()
            try:
                delivery: Delivery = (
                    ExactlyOnce(output, lambda: make_producer(settings, name, transactional_id))
                    if exactly_once else AtLeastOnce(output)
                )
                stage_log.info(
                    "reading %s as group %s from %s; %s%s; dead letters to %s",
                    source_topic, settings.group_id, ",".join(settings.bootstrap_servers), delivery.name,
                    f" (transactional id {transactional_id})" if transactional_id else "", settings.topics.dead_letter,
                )
                try:
                    reason = run_consumer(consumer, handler, delivery, stop=stop, idle_timeout_s=settings.idle_timeout_s)
                except PipelineError as exc:
                    stage_log.error("%s; stopping without committing the current batch", exc)
                    summary.print("failed")
                    return 1
            finally:
                close_quietly(consumer)
        finally:
            close_quietly(output.producer)
    summary.print(reason)
    return 0
