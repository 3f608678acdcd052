"""The consume-process-commit loop (run_consumer) and the rebalance callbacks it reads (Assignment)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..clients import Batch, ClientError, Consumer, FatalError, TopicPartition
from ..errors import PipelineError
from ..kafka_io import MAX_POLL_RECORDS
from ..metrics import Metrics
from .checkpoint import Checkpoint
from .delivery import Delivery
from .handler import RecordHandler, idle_aware, state_owner
from .output import BatchError

POLL_TIMEOUT_S = 0.5
"""How long one poll may block: also the longest a stop request waits."""
RESTORE_STEP_S = 0.2
"""While partitions' state is restoring: how long each restore step between two polls may take."""


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
        self.assigned_at = 0.0
        """When the last assignment was taken in (its stores opened), time.monotonic: idleness counts from then."""

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self._owned = set(partitions)
        self._handler.partitions_assigned({tp.partition for tp in partitions})
        self.assigned_at = time.monotonic()

    def revoked(self, partitions: set[TopicPartition]) -> None:
        self.before_revoke()

    def lost(self, partitions: set[TopicPartition]) -> None:
        self.lost_partitions |= partitions
        self._owned -= partitions
        self._handler.partitions_assigned({tp.partition for tp in self._owned})


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
    after MAX_BATCH_RETRIES failures in a row, PipelineError (see Checkpoint).
    A FatalError (authorization, configuration) stops at once.
    """
    checkpoint = Checkpoint(
        consumer, handler, delivery, stop=stop, interval_s=commit_interval_s, max_records=commit_records,
        lost=assignment.lost_partitions if assignment is not None else set(),
    )
    if assignment is not None:
        assignment.before_revoke = checkpoint.commit_before_revoke
    try:
        return _loop(consumer, handler, checkpoint, stop, idle_timeout_s, metrics, assignment)
    finally:
        if assignment is not None:
            # Closing the consumer revokes its partitions: what is still pending then
            # (a failed last commit, a give-up) must not be committed on the way out.
            assignment.before_revoke = lambda: None


def _loop(
    consumer: Consumer, handler: RecordHandler, checkpoint: Checkpoint, stop: threading.Event, idle_timeout_s: float | None,
    metrics: Metrics | None, assignment: Assignment | None,
) -> str:
    last_record_at = time.monotonic()
    state = state_owner(handler)
    idle = idle_aware(handler)
    while not stop.is_set():
        waiting = state.waiting() if state is not None else set()
        try:
            batch = consumer.poll(0.0 if waiting else checkpoint.poll_timeout(POLL_TIMEOUT_S), MAX_POLL_RECORDS)
            if state is not None and batch:
                batch = _hold_back(consumer, batch, state.waiting())
        except FatalError as exc:
            raise PipelineError(str(exc)) from exc
        if waiting:
            assert state is not None
            state.restore(consumer, RESTORE_STEP_S)
            last_record_at = time.monotonic()  # restoring is not idleness
        last_polled_at = time.monotonic()
        if metrics is not None and metrics.lag_due():
            _note_lag(consumer, metrics)
        try:
            checkpoint.check_rebalance(batch)
            if batch:
                checkpoint.add(batch)
                handler.begin_batch(batch)
                for records in batch.values():
                    for record in records:
                        handler.handle(record)
                handled_at = time.monotonic()
                if metrics is not None:
                    metrics.batch_seconds.observe(handled_at - last_polled_at)
                last_record_at = handled_at
            else:
                handler.begin_batch(batch)
            if checkpoint.due():
                checkpoint.commit()
            checkpoint.settle()
        except FatalError as exc:
            raise PipelineError(str(exc)) from exc
        except (BatchError, ClientError) as exc:
            checkpoint.roll_back(exc)
            last_record_at = time.monotonic()
            continue
        if not batch and not checkpoint.open and not checkpoint.settling:
            if idle is not None:
                idle.idle(consumer)
            if not consumer.assignment():
                # Waiting for partitions (e.g. for a crashed member's session to expire) is not idleness.
                last_record_at = time.monotonic()
            # Nor is the poll that took partitions in (a group joined, stores restored in its rebalance listener).
            elif idle_timeout_s is not None and time.monotonic() - max(
                    last_record_at, assignment.assigned_at if assignment is not None else 0.0) >= idle_timeout_s:
                checkpoint.commit_last()  # offsets committed without waiting: confirmed
                return "idle timeout"
    checkpoint.commit_last()  # a stop request: commit what was handled
    return "stopped"


def _hold_back(consumer: Consumer, batch: Batch, waiting: set[int]) -> Batch:
    """The batch without records of partitions waiting for their state: each is sought back to read them again later.

    Not paused: kafka-python 3.0, a partition paused while a fetch of it was under way, was seen never to
    fetch it again when no newer record came (its fetch session took the dropped records as delivered).
    Seeking back changes what the next fetch asks for, on both clients.
    """
    held = [tp for tp in batch if tp.partition in waiting]
    if not held:
        return batch
    for tp in held:
        consumer.seek(tp, batch[tp][0].offset)
    return {tp: records for tp, records in batch.items() if tp.partition not in waiting}


def _note_lag(consumer: Consumer, metrics: Metrics) -> None:
    """Each assigned partition's end offset minus this consumer's position, as the client last learnt it."""
    metrics.lag = {(tp.topic, tp.partition): lag for tp, lag in consumer.lag(consumer.assignment()).items()}
