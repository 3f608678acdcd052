"""The state side every stage of the detector shares: its partitions' stores, their changelog, its buffered lines."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from ..clients import Consumer
from ..metrics import Metrics
from ..stage import LineBuffer, LineHandler, Output
from ..state import PartitionStates
from .progress import PROGRESS_KEY, Progress
from .purge import Purger


class StateHandler(LineHandler):
    """A RecordHandler's state methods over a PartitionStates (stage.StateOwner), for a subclass's ``handle``.

    A subclass keeps in memory only what it can read again from its tables:
    ``forget`` drops it whenever the tables change under it (partitions
    gained or lost, a roll-back), and ``save`` puts it back into the tables
    before each commit. ``hold_back`` lowers the offsets a commit goes back
    to for records read but not yet done with (a stage that waits for other
    records), so that they are read again after a restart.
    """

    def __init__(self, output: Output, lines: LineBuffer, states: PartitionStates, metrics: Metrics | None = None,
                 purger: Purger | None = None) -> None:
        super().__init__(lines)
        self._output = output
        self._purger = purger
        """Deletes the input's records once committed past (an internal topic's: its reader is this stage)."""
        self._units: deque[Mapping[int, int]] = deque()
        """The offsets of each commit sealed and not yet durable, oldest first."""
        self._states = states
        self._metrics = metrics if metrics is not None and metrics.enabled else None
        """The decisions' metrics, for the stage that routes them (each unit's latency once it is durable)."""

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.gained(self._states.assigned(partitions))
        self.forget()

    def waiting(self) -> set[int]:
        return self._states.waiting()

    def restore(self, consumer: Consumer, budget_s: float) -> None:
        self._states.restore(consumer, budget_s)

    def prepare_commit(self, offsets: dict[int, int]) -> Mapping[int, int]:
        """Save, then send the state's changes with the offsets the commit goes back to (returned)."""
        self.save()
        offsets = self.hold_back(offsets)
        self._states.send_changes(self._send_change, offsets)
        self._units.append(offsets)
        return offsets

    def _send_change(self, topic: str, key: bytes | None, value: bytes | None, partition: int) -> None:
        self._output.send(topic, key, value, None, partition)

    def seal(self) -> None:
        self._states.seal()
        self._lines.seal()
        if self._metrics is not None:
            self._metrics.sealed()

    def emit(self) -> None:
        self._states.committed()
        self._lines.emit()
        if self._units:
            durable = self._units.popleft()
            if self._purger is not None:
                self._purger.committed(durable)
        if self._metrics is not None:
            self._metrics.acknowledged()

    def discard(self) -> None:
        self._units.clear()
        self._states.discard()
        self._lines.discard()
        if self._metrics is not None:
            self._metrics.rolled_back()
        self.forget()

    def progress(self, partition: int) -> Progress | None:
        """The partition's Progress as its table holds it (None: none committed yet)."""
        found = self._states.tables[partition].get(PROGRESS_KEY)
        return found if isinstance(found, Progress) else None

    # What a subclass adds.

    def gained(self, partitions: set[int]) -> None:
        """These partitions are new to the stage (their state is being restored)."""

    def forget(self) -> None:
        """The tables changed under the stage (see the class): drop what it keeps in memory of them."""

    def save(self) -> None:
        """Put what the stage keeps in memory into its tables, to go with the commit."""

    def hold_back(self, offsets: dict[int, int]) -> dict[int, int]:
        """The next input offsets a commit goes back to; by default ``offsets``, after everything read."""
        return offsets
