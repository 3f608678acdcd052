"""How a stage makes what it handled durable and commits its input offsets: at least once, or exactly once."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ..clients import ClientError, Consumer, FatalError, Producer, TopicPartition
from ..errors import PipelineError
from ..kafka_io import TRANSACTION_STEP_TIMEOUT_S
from ..metrics import TRANSACTION_STEPS, Histogram
from .output import BatchError, Output

# The package's logger, "fraud_pipeline.stage", for every module of it: log lines name it as before the split.
log = logging.getLogger(__package__)
trace = logging.getLogger("fraud_pipeline.transactions")
"""The transactions' trace (``--trace-transactions``)."""


class Delivery(Protocol):
    """How handled records are made durable and their input offsets committed."""

    name: str

    def begin(self) -> None:
        """Before the first record after a commit or a rollback."""

    def complete(self, consumer: Consumer, first: dict[TopicPartition, int], offsets: dict[TopicPartition, int],
                 emit: Callable[[], None]) -> None:
        """The records from ``first`` to before ``offsets`` are handled and sealed: make them durable, call ``emit`` and
        commit ``offsets``, now or in a later ``settle``; raise BatchError or ClientError to roll back."""

    @property
    def pending(self) -> bool:
        """Whether completed records wait for their output to be acknowledged."""

    @property
    def busy(self) -> bool:
        """Whether a commit is under way: the next one waits for it, and the loop looks at it often."""

    def settle(self, consumer: Consumer, *, wait: bool = False) -> None:
        """Emit and commit what became durable since (``wait``: wait for all of it, and commit synchronously)."""

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Undo what can be undone since the last commit and rewind the consumer to read it again."""


@dataclass
class _Unit:
    """Records completed together: settled once every send before ``mark`` is acknowledged."""

    mark: int
    first: dict[TopicPartition, int]
    offsets: dict[TopicPartition, int]
    emit: Callable[[], None]


class AtLeastOnce:
    """The output acknowledged, then printed, then the offsets committed: a crash may repeat what was not committed, never skip it.

    The loop does not wait for acknowledgements (librdkafka's stored-offsets
    pattern): each commit interval's records become a unit, marked at the
    producer's count of sends; ``settle``, called between polls, emits the
    units whose sends are all acknowledged, oldest first, and commits their
    offsets without waiting for the answer. A failed send rolls back every
    unit not yet settled: the consumer rewinds to the oldest one's first
    offsets. Only a hand-over and the end wait (``settle(wait=True)``): every
    send flushed, every offset committed synchronously.
    """

    name = "at-least-once"

    def __init__(self, output: Output) -> None:
        self._output = output
        self._units: deque[_Unit] = deque()
        self._unconfirmed: dict[TopicPartition, int] = {}
        """Offsets committed without waiting since the last synchronous commit: committed again when one waits."""

    def begin(self) -> None:
        pass

    @property
    def pending(self) -> bool:
        return bool(self._units)

    busy = False
    """Units are committed as they settle: none waits for another."""

    def complete(self, consumer: Consumer, first: dict[TopicPartition, int], offsets: dict[TopicPartition, int],
                 emit: Callable[[], None]) -> None:
        self._units.append(_Unit(self._output.sent(), first, offsets, emit))

    def settle(self, consumer: Consumer, *, wait: bool = False) -> None:
        if wait and self._units:
            self._output.flush()
        offsets: dict[TopicPartition, int] = {}
        while self._units and self._output.settled(self._units[0].mark):
            unit = self._units.popleft()
            unit.emit()
            offsets |= unit.offsets
        if wait:
            offsets, self._unconfirmed = self._unconfirmed | offsets, {}
        elif offsets:
            self._unconfirmed |= offsets
        _commit_offsets(consumer, offsets, wait=wait)

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        # oldest first: each partition goes back to its first record not yet settled
        rewind = _first_of(*(unit.first for unit in self._units), first_offsets)
        self._units.clear()
        self._output.forget_failures()
        _seek(consumer, rewind)


class _OnHelperThread:
    """A Delivery whose unit is made durable on a helper thread while the loop reads on, its later sends held meanwhile.

    One unit is under way at a time; the next waits for it (``busy``). A unit whose work failed is kept
    until it is rolled back (``pending``), and its first offsets are where the rewind goes back to.
    """

    def __init__(self, output: Output) -> None:
        self._output = output
        self._under_way: _Commit | None = None
        self._failed: _Commit | None = None
        """The last unit whose work failed, until it is rolled back."""

    @property
    def pending(self) -> bool:
        """Whether a unit is under way, or its work failed and is not rolled back yet."""
        return self._under_way is not None or self._failed is not None

    @property
    def busy(self) -> bool:
        """Whether a unit is under way: the next commit waits for it."""
        return self._under_way is not None

    def _start(self, unit: _Commit, work: Callable[[], None], name: str) -> None:
        """Hold the sends from now on and run ``work`` for ``unit`` on a helper thread."""
        self._under_way = unit
        self._output.hold()

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # raised again on the loop's thread
                unit.error = exc
            finally:
                unit.done.set()

        threading.Thread(target=run, daemon=True, name=name).start()

    def _take(self, *, wait: bool) -> _Commit | None:
        """The unit under way if its work is through (``wait``: once it is), else None; its error if it failed."""
        unit = self._under_way
        if unit is None or not unit.done.wait(None if wait else 0):
            return None
        self._under_way = None
        if unit.error is not None:
            self._failed = unit
            raise unit.error
        return unit

    def _rewind(self, first_offsets: dict[TopicPartition, int],
                finish: Callable[[], None]) -> tuple[dict[TopicPartition, int], _Commit | None]:
        """Rolling back: ``finish`` the unit under way (through: it is emitted), drop the held sends; where to go back,
        and the unit whose work failed, if one did."""
        try:
            finish()
        except FatalError:
            raise
        except (BatchError, ClientError):  # noted as failed: its records are read again
            pass
        failed, self._failed = self._failed, None
        self._output.release(send=False)
        return (_first_of(failed.first, first_offsets) if failed is not None else dict(first_offsets)), failed


class FlushedAtLeastOnce(_OnHelperThread):
    """At least once for a producer whose successes cost no report (librdkafka's): flushed per unit, not per record.

    Kafka Streams' at-least-once commit: each commit interval's sends are
    flushed, then printed, then its offsets committed. The flush runs on a
    helper thread while the loop reads on, its sends held meanwhile (as
    ExactlyOnce holds them through a commit), so no delivered record calls
    back into Python: only a failure is reported, and it rolls back every
    unit not yet committed. The hand-over and the end wait for the flush and
    commit synchronously.
    """

    name = "at-least-once"

    def __init__(self, output: Output) -> None:
        super().__init__(output)
        self._unconfirmed: dict[TopicPartition, int] = {}
        """Offsets committed without waiting since the last synchronous commit: committed again when one waits."""

    def begin(self) -> None:
        pass

    def complete(self, consumer: Consumer, first: dict[TopicPartition, int], offsets: dict[TopicPartition, int],
                 emit: Callable[[], None]) -> None:
        self._finish(consumer, wait=True)  # the unit before, then this one's held sends
        self._start(_Commit(first, emit, offsets=offsets), partial(self._output.flush, TRANSACTION_STEP_TIMEOUT_S),
                    "at-least-once-flush")

    def settle(self, consumer: Consumer, *, wait: bool = False) -> None:
        self._finish(consumer, wait=wait)

    def _finish(self, consumer: Consumer, *, wait: bool) -> None:
        """If the flush under way is through (``wait``: once it is), print the unit, queue the held sends and commit
        its offsets; raise its error if it failed."""
        unit = self._take(wait=wait)
        offsets: dict[TopicPartition, int] = {}
        if unit is not None:
            unit.emit()
            self._output.release(send=True)
            offsets = unit.offsets
        if wait:
            offsets, self._unconfirmed = self._unconfirmed | offsets, {}
        else:
            self._unconfirmed |= offsets
        _commit_offsets(consumer, offsets, wait=wait)

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        rewind, _ = self._rewind(first_offsets, partial(self._finish, consumer, wait=True))
        self._output.forget_failures()
        _seek(consumer, rewind)


@dataclass
class _Commit:
    """A transaction being committed, or a unit flushed, on a helper thread while the loop reads on."""

    first: dict[TopicPartition, int]
    emit: Callable[[], None]
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """The input offsets committed after it (at least once) or with it (a transaction)."""
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    steps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Seconds of each of metrics.TRANSACTION_STEPS, in order."""
    number: int = 0
    """The transaction's number in this process (exactly once), for the trace."""


class ExactlyOnce(_OnHelperThread):
    """One Kafka transaction per commit interval: routed records and input offsets commit together.

    The loop does not stop reading while a transaction commits: the flush,
    the offsets sent and the commit run on a helper thread, and the records
    read meanwhile are handled at once. Their sends are held (no client lets a
    record join a transaction under commit) and queued, in order, in the next
    transaction as soon as the commit is through. One commit is under way at
    a time; the next waits for it (``busy``).
    """

    name = "exactly-once"

    def __init__(self, output: Output, new_producer: Callable[[], Producer], tally: Counter[str] | None = None,
                 steps: Mapping[str, Histogram] | None = None, *, trace: bool = False) -> None:
        super().__init__(output)
        self._trace = trace
        """Log each transaction's steps (``--trace-transactions``): begun, first record sent and acknowledged,
        committing, ending (its end about to be asked for), its end."""
        self._number = 0
        """Transactions begun by this process."""
        self._new_producer = new_producer
        self._tally: Counter[str] = Counter() if tally is None else tally
        """Transactions by result: committed, aborted, retried (a new producer)."""
        self._steps = steps
        """Seconds each commit step took, by step (metrics.TRANSACTION_STEPS)."""
        self._open = False
        """A transaction is begun and neither committed nor aborted."""
        self._begin_held = False
        """A transaction was to begin while one was being committed: it begins when that commit is through."""
        self._init_transactions()

    def begin(self) -> None:
        if self._under_way is not None:
            self._begin_held = True
        else:
            self._open = True  # a failed begin is aborted too, or its producer replaced
            self._output.producer.begin_transaction()
            self._began()

    def _began(self) -> None:
        """A transaction was begun: number it, and trace it and its first record."""
        self._number += 1
        if self._trace:
            number = self._number
            trace.info("transaction %d begun", number)
            self._output.watch_first_send(lambda: trace.info("transaction %d: first record sent", number),
                                          lambda: trace.info("transaction %d: first record acknowledged", number))

    def settle(self, consumer: Consumer, *, wait: bool = False) -> None:
        self._finish(wait=wait)

    def complete(self, consumer: Consumer, first: dict[TopicPartition, int], offsets: dict[TopicPartition, int],
                 emit: Callable[[], None]) -> None:
        self._finish(wait=True)  # the commit before, then this transaction's held sends
        commit = _Commit(first, emit, offsets=offsets, number=self._number)
        if self._trace:
            trace.info("transaction %d committing, input offsets %s", commit.number, _described(offsets))
        self._start(commit, partial(self._commit, commit, self._output.producer, offsets, consumer.group_metadata()),
                    "transaction-commit")

    def _commit(self, commit: _Commit, producer: Producer, offsets: dict[TopicPartition, int], group: object) -> None:
        """On the helper thread: make the transaction's records durable, add the offsets, commit."""
        # Every record must be acknowledged before the commit: kafka-python 3.0
        # can commit a transaction whose sends are still pending, and a send
        # that then fails would be lost.
        started = time.monotonic()
        self._output.flush(timeout_s=TRANSACTION_STEP_TIMEOUT_S)
        flushed = time.monotonic()
        producer.send_offsets_to_transaction(offsets, group, TRANSACTION_STEP_TIMEOUT_S)
        offsets_sent = time.monotonic()
        if self._trace:  # before the end is asked for: a crash before this line leaves the transaction to abort
            trace.info("transaction %d ending (records flushed, offsets added)", commit.number)
        producer.commit_transaction(TRANSACTION_STEP_TIMEOUT_S)
        commit.steps = (flushed - started, offsets_sent - flushed, time.monotonic() - offsets_sent)
        if self._trace:
            trace.info("transaction %d committed", commit.number)

    def _finish(self, *, wait: bool) -> None:
        """If the commit under way is through (``wait``: once it is), emit it and begin the next transaction with its
        held sends; raise its error if it failed."""
        commit = self._take(wait=wait)
        if commit is None:
            return
        self._open = False
        if self._steps is not None:
            for step, seconds in zip(TRANSACTION_STEPS, commit.steps, strict=True):
                self._steps[step].observe(seconds)
        self._tally["committed"] += 1
        commit.emit()
        if self._begin_held:
            self._begin_held = False
            self._open = True
            self._output.producer.begin_transaction()
            self._began()
        self._output.release(send=True)

    def roll_back(self, consumer: Consumer, first_offsets: dict[TopicPartition, int]) -> None:
        """Abort (or replace the producer), then rewind to the group's committed offsets.

        A commit under way is waited for first: if it went through, its lines
        are emitted and only what came after is rolled back. A commit that timed
        out on our side may still have completed at the coordinator (a new
        producer's init_transactions waits for it), so the records are read again
        from what the group committed, not from the first offsets: what did
        commit is not committed twice, and its lines are printed (the group's
        offsets on partitions still ours show it, as nobody else commits them).
        """
        rewind, failed = self._rewind(first_offsets, partial(self._finish, wait=True))
        self._begin_held = False
        if self._output.stalled:
            # Sends still retried by the client would hold up the next transaction too (seen with kafka-python
            # after the transaction coordinator's broker died): start afresh instead of aborting.
            self._replace_producer("sends were not acknowledged")
        elif self._open:
            try:
                self._output.producer.abort_transaction(TRANSACTION_STEP_TIMEOUT_S)
            except FatalError:
                raise
            except ClientError as exc:  # includes a fenced producer
                self._replace_producer(f"abort failed ({exc})")
        self._open = False
        self._output.forget_failures()
        committed = consumer.committed(rewind, TRANSACTION_STEP_TIMEOUT_S)
        number = failed.number if failed is not None else self._number
        if failed is not None and _went_through(failed, committed, consumer.assignment()):
            log.warning("transaction %d, whose commit failed, went through at its coordinator (the group's offsets show "
                        "it): its records are not read again", number)
            self._tally["committed"] += 1
            failed.emit()
        else:
            self._tally["aborted"] += 1
            if self._trace:
                trace.info("transaction %d aborted; reading again from %s", number, _described(committed))
        resume = {}
        for tp, first in rewind.items():
            done = committed.get(tp)
            resume[tp] = first if done is None else done
        _seek(consumer, resume)

    def _replace_producer(self, why: str) -> None:
        """A new producer with the same transactional id: it aborts whatever the old one left open and fences it."""
        log.warning("%s: starting a new producer with the same transactional id", why)
        self._tally["retried"] += 1
        self._swap_producer()
        self._init_transactions()

    def _swap_producer(self) -> None:
        """Write through a new producer; the old one (fenced, or stuck) is closed aside, at once.

        Nothing of its queue may reach the brokers after it is replaced (a late transactional offset commit would
        join the new producer's transaction): its open transaction is aborted by the new one's init_transactions.
        """
        old = self._output.producer
        threading.Thread(target=old.close, args=(0,), daemon=True).start()
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


def _commit_offsets(consumer: Consumer, offsets: dict[TopicPartition, int], *, wait: bool) -> None:
    """Commit the offsets of output already acknowledged (``wait``: synchronously); a failure is only logged."""
    if not offsets:
        return
    try:
        consumer.commit(offsets, asynchronous=not wait)
    except FatalError:
        raise
    except ClientError as exc:
        # The output is out: reading these records again would only repeat it, so carry on.
        log.warning("offset commit failed, the batch may be delivered again: %s", exc)


def _went_through(commit: _Commit, committed: Mapping[TopicPartition, int | None], owned: set[TopicPartition]) -> bool:
    """Whether the group's ``committed`` offsets show that ``commit``'s transaction committed: they reached its offsets
    on every partition of it still ``owned`` (no other member commits those) where it moves past its first record read
    (the commit before it went no further than that record; a held-back offset may not move at all)."""
    mine = [tp for tp, offset in commit.offsets.items() if tp in owned and offset > commit.first.get(tp, offset)]
    return bool(mine) and all((done := committed.get(tp)) is not None and done >= commit.offsets[tp] for tp in mine)


def _described(offsets: Mapping[TopicPartition, int | None]) -> str:
    """Offsets as ``topic[partition]=offset``, sorted, for the trace."""
    return " ".join(f"{tp.topic}[{tp.partition}]={offset}" for tp, offset in sorted(offsets.items()))


def _first_of(*offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, its offset in the first of ``offsets`` (oldest first) that has it: where a rewind goes back to."""
    first: dict[TopicPartition, int] = {}
    for each in offsets:
        for tp, offset in each.items():
            first.setdefault(tp, offset)
    return first


def _seek(consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp in assigned:  # a partition lost to a rebalance is read again by its new owner
            consumer.seek(tp, offset)
