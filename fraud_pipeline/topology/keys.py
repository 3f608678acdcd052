"""The key stage: the rules over keys other than the account, each key partition in the defined order.

A key partition gets the probes of every payments partition (its *origins*),
each origin's in its own order, interleaved as they happen to arrive. It
takes them in (sequence time, origin, offset, group) order
(fraud_pipeline.rules.order): the smallest waiting probe goes once every
origin with nothing waiting has promised, by a later probe or a marker, that
none of its later probes comes before it. So the order, and with it every
aggregate a key rule reads, is the input's, not the arrival's.

A probe waits in memory; the commit goes back to the first probe still
waiting (``hold_back``), and the partition's Progress keeps, with the state,
the last probe answered per origin and the promises as they stood at that
offset. Read again after a restart, the probes already answered are passed
over and the others wait again, in the same order.

A probe that comes after its origin's marker had passed its sequence time
(its origin was quiet, see anchor.py) is taken at the marker's time, in the
order it came; its answer says it came late.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ..clients import Record
from ..metrics import Metrics
from ..rules import Engine, RuleSet
from ..rules.order import Probes, encode_answer, fired_of
from ..stage import DeadLetters, LineBuffer, Output
from ..state import PartitionStates
from .handler import StateHandler
from .plan import Plan
from .progress import PROGRESS_KEY, Progress
from .purge import Purger

log = logging.getLogger("fraud_detector")

Promises = tuple[int | None, ...]


class _Probe:
    __slots__ = ("event_ms", "group", "late", "offset", "origin", "position", "promised", "seq", "values")

    def __init__(self, origin: int, offset: int, seq: int, event_ms: int, group: int, values: list[Any], position: int,
                 promised: Promises, late: bool) -> None:
        self.origin = origin
        self.offset = offset
        self.seq = seq
        self.event_ms = event_ms
        self.group = group
        self.values = values
        self.position = position
        """Its offset in the probes topic: where a commit goes back to while it waits."""
        self.promised = promised
        """Every origin's promise just before it was read: what a restart from ``position`` starts from."""
        self.late = late


class _Lane:
    """One key partition: per origin, its promise, its waiting probes and the last one answered."""

    def __init__(self, origins: int, progress: Progress | None) -> None:
        self.promised: list[int | None] = [None] * origins
        self.waiting: list[deque[_Probe]] = [deque() for _ in range(origins)]
        self.done: dict[int, tuple[int, int]] = {}
        if progress is not None:
            for origin, seq in progress.frontier.items():
                if origin < origins:
                    self.promised[origin] = seq
            self.done = dict(progress.done)
        self.last = dict(self.done)
        """Per origin, the last probe taken in (answered or waiting): anything not after it is a repeat."""

    def promise(self, origin: int, seq: int) -> None:
        current = self.promised[origin]
        if current is None or seq > current:
            self.promised[origin] = seq

    def next(self) -> _Probe | None:
        """The smallest waiting probe if no origin can still send one before it, else None."""
        best: _Probe | None = None
        for queue in self.waiting:
            if queue:
                head = queue[0]
                if best is None or (head.seq, head.origin, head.offset, head.group) < (best.seq, best.origin, best.offset,
                                                                                       best.group):
                    best = head
        if best is None:
            return None
        seq, origin = best.seq, best.origin
        for other, queue in enumerate(self.waiting):
            if other == origin or queue:
                continue
            promised = self.promised[other]
            if promised is None or promised < seq or (promised == seq and other < origin):
                return None
        self.waiting[origin].popleft()
        return best

    def first_waiting(self) -> _Probe | None:
        found: _Probe | None = None
        for queue in self.waiting:
            if queue and (found is None or queue[0].position < found.position):
                found = queue[0]
        return found


class KeyStage(StateHandler):
    """Probes and markers in, answers out to each payment's partition of the answers topic."""

    def __init__(self, plan: Plan, output: Output, dead_letters: DeadLetters, lines: LineBuffer,
                 ruleset_of: Callable[[], RuleSet], states: PartitionStates, origins: int,
                 metrics: Metrics | None = None, purger: Purger | None = None) -> None:
        super().__init__(output, lines, states, purger=purger)
        self._plan = plan
        self._dead_letters = dead_letters
        self._ruleset_of = ruleset_of
        self._origins = origins
        self._metrics = metrics if metrics is not None and metrics.enabled else None
        self._ruleset: RuleSet | None = None
        self._probes: Probes
        self._engines: list[Engine] = []
        self._lanes: dict[int, _Lane] = {}
        self.read = 0
        """Records handled (the idle end of the stage after it compares it with what was sent)."""
        self.late = 0
        self._current()

    def _current(self) -> None:
        ruleset = self._ruleset_of()
        if ruleset is not self._ruleset:
            self._ruleset = ruleset
            self._probes = Probes(ruleset, self._plan.groups)
            self._engines = [Engine(group.ruleset) for group in self._probes.groups]

    def begin_batch(self, batch: object) -> None:
        self._current()

    def forget(self) -> None:
        self._lanes.clear()

    def _lane(self, partition: int) -> _Lane:
        lane = self._lanes.get(partition)
        if lane is None:
            lane = self._lanes[partition] = _Lane(self._origins, self.progress(partition))
        return lane

    def handle(self, record: Record) -> None:
        self.read += 1
        try:
            data = orjson.loads(record.value or b"")
            if len(data) == 2:
                origin, seq = int(data[0]), int(data[1])
                probe = None
            else:
                origin, offset, seq, event_ms, group, values = data
                origin, offset, seq, event_ms, group = int(origin), int(offset), int(seq), int(event_ms), int(group)
                if not isinstance(values, list) or not 0 <= group < len(self._probes.groups):
                    raise ValueError("not a probe")
            if not 0 <= origin < self._origins:
                raise ValueError(f"origin partition {origin} beyond the {self._origins} of {self._plan.payments}")
        except (ValueError, TypeError) as exc:  # written by the anchor: never expected
            self._dead_letters.send(record, f"not a probe or a marker: {exc}")
            self._lines.add("dead-lettered", None)
            return
        lane = self._lane(record.partition)
        if len(data) == 2:
            lane.promise(origin, seq)
            self._lines.add("marker", None)
        else:
            last = lane.last.get(origin)
            if last is not None and (offset, group) <= last:
                self._lines.add("repeat", None)  # sent again by an anchor that went back (at-least-once)
                return
            promised = lane.promised[origin]
            late = promised is not None and seq < promised
            probe = _Probe(origin, offset, promised if late and promised is not None else seq, event_ms, group, values,
                           record.offset, tuple(lane.promised), late)
            lane.promise(origin, probe.seq)
            lane.waiting[origin].append(probe)
            lane.last[origin] = (offset, group)
        self._release(record.partition, lane)

    def _release(self, partition: int, lane: _Lane) -> None:
        table = self._states.tables[partition]
        send = self._output.send
        answers = self._plan.answers
        while (probe := lane.next()) is not None:
            group = self._probes.groups[probe.group]
            decision = self._engines[probe.group].decide(group.payment(probe.values), probe.event_ms, table)
            notes = decision.notes
            if probe.late:
                self.late += 1
                self._lines.add("late", None)
                if self._metrics is not None:
                    self._metrics.late_probes += 1
                notes = (*notes, f"{','.join(group.fields)}: came after its partition's marker had passed it: taken at "
                                 f"{probe.seq} ms, {probe.seq - probe.event_ms} ms after its event time")
            send(answers, None, encode_answer(probe.offset, probe.group, fired_of(decision), notes), None, probe.origin)
            lane.done[probe.origin] = (probe.offset, probe.group)
            self._lines.add("answer", None)

    def save(self) -> None:
        for partition, lane in self._lanes.items():
            if partition in self._states.tables:
                first = lane.first_waiting()
                promised = first.promised if first is not None else tuple(lane.promised)
                self._states.tables[partition].put(PROGRESS_KEY, Progress(
                    done=dict(lane.done), frontier={o: s for o, s in enumerate(promised) if s is not None}))

    def hold_back(self, offsets: dict[int, int]) -> dict[int, int]:
        held = dict(offsets)
        for partition, lane in self._lanes.items():
            first = lane.first_waiting()
            if first is not None and partition in held:
                held[partition] = min(held[partition], first.position)
        return held
