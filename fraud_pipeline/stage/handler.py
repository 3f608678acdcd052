"""What a stage does with each record (RecordHandler), and the printed lines it holds until they are durable."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO, runtime_checkable

from ..clients import Batch, Consumer, Record
from ..payment import MAX_RECORD_BYTES, InvalidPayment, Payment, decode
from ..runtime import Summary
from .output import DeadLetters, Output


class RecordHandler(Protocol):
    """What a stage does with each record."""

    def begin_batch(self, batch: Batch) -> None:
        """A batch was polled and is about to be handled; called after an empty poll too (the detector keeps
        its rules and lists readers polled while no payment comes, so the first one after a quiet spell sees
        every change made meanwhile)."""

    def partitions_assigned(self, partitions: set[int]) -> None:
        """The consumer now owns exactly these partitions of the source topic (after a rebalance)."""

    def handle(self, record: Record) -> None:
        """Send and/or buffer the outcome of one record."""

    def seal(self) -> None:
        """What was handled since the last seal is one unit, about to be committed: keep its lines (and state) apart."""

    def emit(self) -> None:
        """The oldest sealed unit is durable: print its buffered lines and count its outcomes."""

    def discard(self) -> None:
        """Everything not emitted was rolled back: forget its buffered lines."""


class LineHandler:
    """The RecordHandler methods of a stage that keeps no state of its own: its lines go with each unit.

    The processors use it as it is; the detector's stages extend it with their state (topology.StateHandler).
    """

    def __init__(self, lines: LineBuffer) -> None:
        self._lines = lines

    def begin_batch(self, batch: Batch) -> None:
        pass

    def partitions_assigned(self, partitions: set[int]) -> None:
        pass

    def seal(self) -> None:
        self._lines.seal()

    def emit(self) -> None:
        self._lines.emit()

    def discard(self) -> None:
        self._lines.discard()


@runtime_checkable
class StateOwner(Protocol):
    """A handler that keeps state per source partition, backed by a changelog (the detector).

    The loop pauses the partitions ``waiting`` names (their state is being
    restored), calls ``restore`` between polls until they are ready, and
    ``prepare_commit`` before each commit, so that the commit carries the
    state's changes with the records they came from.
    """

    def waiting(self) -> set[int]:
        """Source partitions whose records cannot be handled yet."""

    def restore(self, consumer: Consumer, budget_s: float) -> None:
        """Work on restoring the waiting partitions for at most ``budget_s``; position ``consumer`` on those ready."""

    def prepare_commit(self, offsets: dict[int, int]) -> Mapping[int, int] | None:
        """Send the state's changes since the last commit, and the next input ``offsets`` they go with.

        May return lower offsets for some partitions: records read but held back (waiting for others), which the
        commit then goes back to, so that they are read again after a restart or a roll-back.
        """


@runtime_checkable
class IdleAware(Protocol):
    """A handler told when nothing is pending: no record came, nothing is uncommitted, no commit is under way."""

    def idle(self, consumer: Consumer) -> None:
        """Everything handled is committed; the consumer has no new record."""


def idle_aware(handler: RecordHandler) -> IdleAware | None:
    return handler if callable(getattr(type(handler), "idle", None)) else None  # type: ignore[return-value]


def state_owner(handler: RecordHandler) -> StateOwner | None:
    """The handler as a StateOwner if its class says it is one (not a mock answering every name)."""
    methods = ("waiting", "restore", "prepare_commit")
    return handler if all(callable(getattr(type(handler), name, None)) for name in methods) else None  # type: ignore[return-value]


class LineBuffer:
    """Outcomes and printed lines of what was handled, released unit by unit once durable.

    ``seal`` closes a unit (what a commit carries); ``emit`` releases the
    oldest sealed one, or, with none sealed, what is pending.
    """

    def __init__(self, summary: Summary, quiet: bool, out: TextIO = sys.stdout) -> None:
        self.summary = summary
        self._quiet = quiet
        self._out = out
        self._pending: list[tuple[str, str | None]] = []
        self._sealed: deque[list[tuple[str, str | None]]] = deque()

    def add(self, outcome: str, line: str | None) -> None:
        self._pending.append((outcome, line))

    def seal(self) -> None:
        self._sealed.append(self._pending)
        self._pending = []

    def emit(self) -> None:
        if not self._sealed:
            self.seal()
        for outcome, line in self._sealed.popleft():
            self.summary.add(outcome)
            if line is not None and not self._quiet:
                self._out.write(line + "\n")
        self._out.flush()

    def discard(self) -> None:
        self._pending.clear()
        self._sealed.clear()


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


HandlerFactory = Callable[[Output, DeadLetters, LineBuffer], RecordHandler]
