"""Commit bookkeeping of the loop: what is pending since the last commit, when to commit it, and what to do when that fails.

As quix-streams' ``Checkpoint``: the loop adds each polled batch, asks whether
a commit is due, and commits or rolls back; the Checkpoint keeps the offsets,
the interval, the failures in a row with their backoff, and the commit that a
rebalance asks for inside a poll.
"""

from __future__ import annotations

import logging
import threading
import time

from ..clients import Batch, ClientError, Consumer, FatalError, TopicPartition
from ..errors import PipelineError
from .delivery import Delivery
from .handler import RecordHandler, state_owner
from .output import BatchError

# The package's logger, "fraud_pipeline.stage", for every module of it: log lines name it as before the split.
log = logging.getLogger(__package__)

BUSY_POLL_S = 0.005
"""While a commit is under way: how long a poll may wait before the loop looks whether it is through."""
MAX_BATCH_RETRIES = 8
"""Failed attempts in a row before the stage gives up (with backoff: about a minute).
A fenced producer (FencedError) is replaced and its records read again: the
coordinator also fences a producer whose transaction it timed out. Two live
instances sharing one transactional id fence each other until one gives up."""


class Checkpoint:
    """What was handled since the last commit, and its commit (or roll-back) through the Delivery.

    Committing emits the handler's buffered lines once the output is durable;
    rolling back discards them and rewinds the consumer to read the records again.
    """

    def __init__(
        self,
        consumer: Consumer,
        handler: RecordHandler,
        delivery: Delivery,
        *,
        stop: threading.Event,
        interval_s: float,
        max_records: int,
        lost: set[TopicPartition],
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._state = state_owner(handler)
        self._delivery = delivery
        self._stop = stop
        self._interval_s = interval_s
        self._max_records = max_records
        self._lost = lost
        """Partitions lost since the last poll: the Assignment's set, emptied here once acted on."""
        self.first: dict[TopicPartition, int] = {}
        """Per partition, the first offset handled since the last commit: where a roll-back rewinds to."""
        self.next: dict[TopicPartition, int] = {}
        """Per partition, the offset after the last one handled: what a commit commits."""
        self.records = 0
        """Records handled since the last commit."""
        self.opened_at = 0.0
        """When the first of them was added (time.monotonic)."""
        self.failures = 0
        """Failed attempts in a row; a unit made durable resets it."""
        self.revoke_failures: list[Exception] = []
        """Failures of the commit before a hand-over, raised again after the poll it happened in."""
        self.held: dict[TopicPartition, int] = {}
        """Per partition, the offset the last commit went back to when the handler held records back (see
        handler.StateOwner.prepare_commit): what a roll-back rewinds to at the latest, read since or not."""

    @property
    def open(self) -> bool:
        """Whether anything was handled since the last commit or roll-back."""
        return bool(self.first)

    def add(self, batch: Batch) -> None:
        """Records about to be handled; the first batch after a commit or roll-back opens the Delivery's unit (a transaction).

        The offsets are noted before the Delivery begins: a failed begin rolls this batch back too.
        """
        opening = not self.open
        self._note(batch)
        if opening:
            self._delivery.begin()

    def _note(self, batch: Batch) -> None:
        if not self.first:
            self.opened_at = time.monotonic()
        for tp, records in batch.items():
            first = records[0].offset
            self.first.setdefault(tp, min(first, self.held.get(tp, first)))
            self.next[tp] = records[-1].offset + 1
            self.records += len(records)

    def _clear(self) -> None:
        self.first, self.next, self.records = {}, {}, 0

    @property
    def settling(self) -> bool:
        """Whether committed records still wait for their output's acknowledgements (at-least-once)."""
        return self._delivery.pending

    def poll_timeout(self, longest_s: float) -> float:
        """How long the next poll may wait: at most ``longest_s``, no later than the pending commit is due,
        no longer than an interval while records wait for acknowledgements, and briefly while a commit is under way."""
        if self._delivery.busy:
            return min(longest_s, BUSY_POLL_S)
        if not self.open:
            return min(longest_s, self._interval_s) if self._delivery.pending else longest_s
        return max(0.0, min(longest_s, self.opened_at + self._interval_s - time.monotonic()))

    def due(self) -> bool:
        """Whether what is pending is to be committed now: its interval is over (and no commit is under way), or
        max_records are pending (the commit under way is waited for)."""
        return self.open and (self.records >= self._max_records
                              or (not self._delivery.busy and time.monotonic() - self.opened_at >= self._interval_s))

    def commit(self) -> None:
        """Seal what is pending and hand it to the Delivery, which makes it durable and commits its offsets (at once
        or in a later ``settle``); BatchError or ClientError leaves it pending, to roll back."""
        offsets = dict(self.next)
        if self._state is not None:
            kept = self._state.prepare_commit({tp.partition: offset for tp, offset in offsets.items()})
            if kept is not None:
                for tp, offset in offsets.items():
                    at = kept.get(tp.partition, offset)
                    if at < offset:
                        self.held[tp] = offsets[tp] = at
                    else:
                        self.held.pop(tp, None)
        self._handler.seal()
        self._delivery.complete(self._consumer, dict(self.first), offsets, self._durable)
        self._clear()

    def _durable(self) -> None:
        """The Delivery's ``emit``: the oldest sealed unit is durable; print its lines, and the failures in a row end."""
        self.failures = 0
        self._handler.emit()

    def settle(self, *, wait: bool = False) -> None:
        """Emit and commit what the Delivery has seen become durable (``wait``: all of it, offsets committed synchronously)."""
        if wait or self._delivery.pending:
            self._delivery.settle(self._consumer, wait=wait)

    def roll_back(self, exc: Exception) -> None:
        """Undo what is pending after ``exc`` and wait the backoff; PipelineError after MAX_BATCH_RETRIES failures in a row."""
        self.failures += 1
        if self.failures >= MAX_BATCH_RETRIES:
            self._handler.discard()
            raise PipelineError(f"giving up after {MAX_BATCH_RETRIES} failed attempts in a row: {exc}") from exc
        log.warning("batch failed (%s: %s); rolling back and reading it again", type(exc).__name__, exc)
        self._undo()
        self._stop.wait(min(0.5 * 2 ** (self.failures - 1), 10.0))

    def commit_before_revoke(self) -> None:
        """The Assignment's ``before_revoke``, inside a poll: commit what is pending while its partitions are still ours.

        A failure cannot be rolled back inside the poll: it is kept, and check_rebalance raises it after the poll.
        """
        try:
            if self.open:
                self.commit()
            self.settle(wait=True)
        except Exception as exc:  # raised again after the poll, where the loop rolls back
            self.revoke_failures.append(exc)

    def check_rebalance(self, batch: Batch) -> None:
        """After a poll: if the commit before a hand-over failed, or partitions were lost, raise to roll back all that is pending.

        Nothing of it may be committed now, ``batch`` (polled after the rebalance) included: it is all read again.
        """
        if not (self.revoke_failures or self._lost):
            return
        failure = self.revoke_failures[0] if self.revoke_failures else BatchError(f"partitions lost: {sorted(self._lost)}")
        self.revoke_failures.clear()
        self._lost.clear()
        if self.open or self.settling:
            self._note(batch)
            if isinstance(failure, (BatchError, ClientError)):
                raise failure
            raise BatchError(f"commit before a rebalance failed: {type(failure).__name__}: {failure}") from failure

    def commit_last(self) -> None:
        """At the end (a stop, idleness): commit what is pending and wait for it; if that fails, roll it back for the
        next start to read again."""
        try:
            if self.open:
                self.commit()
            self.settle(wait=True)
        except FatalError as exc:
            raise PipelineError(str(exc)) from exc
        except (BatchError, ClientError) as exc:
            log.warning("the last commit failed (%s); its records will be read again at the next start", exc)
            self._undo()

    def _undo(self) -> None:
        """Roll back what is pending: the Delivery first (a commit under way may still go through and print its lines),
        then the handler's lines and state."""
        rewind = dict(self.first)
        if self.held:
            owned = self._consumer.assignment()
            for tp, offset in self.held.items():
                if tp in owned:
                    rewind[tp] = min(offset, rewind.get(tp, offset))
        try:
            self._delivery.roll_back(self._consumer, rewind)
        finally:
            self._handler.discard()
            self._clear()
