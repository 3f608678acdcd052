"""The consume-process-commit loop (run_consumer) and the rebalance callbacks it reads (Assignment)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..clients import Batch, ClientError, Consumer, FatalError, TopicPartition
from ..kafka_io import MAX_POLL_RECORDS
from ..metrics import Metrics
from ..runtime import PipelineError
from .delivery import Delivery
from .handler import RecordHandler
from .output import BatchError

# The package's logger, "fraud_pipeline.stage", for every module of it: log lines name it as before the split.
log = logging.getLogger(__package__)

POLL_TIMEOUT_S = 0.5
"""How long one poll may block: also the longest a stop request waits."""
MAX_BATCH_RETRIES = 8
"""Failed attempts in a row before the stage gives up (with backoff: about a minute).
A fenced producer (FencedError) is replaced and its records read again: the
coordinator also fences a producer whose transaction it timed out. Two live
instances sharing one transactional id fence each other until one gives up."""


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
