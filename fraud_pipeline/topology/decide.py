"""The decider: the last stage of the decision path, over the answers topic (partitioned as the payments).

Each payments partition's tickets (the payments, with the account's
findings) and the answers of the key stage meet on the same partition. The
decider takes a ticket's answers as they come, and decides the partition's
payments in offset order, each once all its answers are in: the account's
and every key's rules merged (rules.order.Merger), then the lists, live,
on top; routed as the single-stage detector routes.

The commit goes back to the first ticket (or answer) still waiting
(``hold_back``); the partition's Progress keeps the last payment decided,
so that what is read again after a restart is decided once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ..clients import Record
from ..live_rules import LiveLists, LiveRules
from ..metrics import Metrics
from ..payment import InvalidPayment, decode
from ..rules import RuleSet
from ..rules.lists import LISTS
from ..rules.order import Fired, Merger, fired_from
from ..stage import DeadLetters, LineBuffer, Output
from ..state import PartitionStates
from .anchor import TICKET
from .handler import StateHandler
from .progress import PROGRESS_KEY, Progress
from .purge import Purger
from .route import Router

log = logging.getLogger("fraud_detector")


class _Ticket:
    __slots__ = ("answers", "fired", "first", "key", "notes", "offset", "payment_type", "position", "probes", "timestamp",
                 "value")

    def __init__(self, record: Record, data: list[Any]) -> None:
        offset, timestamp, probes, payment_type, fired, notes = data
        self.offset = int(offset)
        self.timestamp = int(timestamp)
        self.probes = int(probes)
        self.payment_type = str(payment_type)
        self.fired: Fired = fired_from(fired)
        self.notes = tuple(str(n) for n in notes)
        self.key = record.key
        self.value = record.value
        self.position = record.offset
        self.first = record.offset
        """Its position, or that of an answer of it read before it (at-least-once): where a commit goes back to."""
        self.answers: dict[int, tuple[Fired, tuple[str, ...], int]] = {}
        """Per group: what fired, the notes, and the answer's offset in the answers topic."""


class _Lane:
    def __init__(self, decided: int) -> None:
        self.decided = decided
        """The offset of the last payment decided (-1: none)."""
        self.tickets: deque[_Ticket] = deque()
        self.by_offset: dict[int, _Ticket] = {}
        self.early: dict[int, dict[int, tuple[Fired, tuple[str, ...], int]]] = {}
        """Answers read before their ticket (at-least-once: the two are not one transaction)."""
        self.joined_early: dict[int, _Ticket] = {}
        """Waiting tickets that took in answers read before them: the only ones whose ``first`` is not their position."""

    def take(self, ticket: _Ticket) -> None:
        """A ticket read: it waits, with the answers of it read before it."""
        early = self.early.pop(ticket.offset, None)
        if early:
            ticket.answers.update(early)
            ticket.first = min(ticket.position, *(answer[2] for answer in early.values()))
            self.joined_early[ticket.offset] = ticket
        self.tickets.append(ticket)
        self.by_offset[ticket.offset] = ticket

    def first_position(self) -> int | None:
        """The first position in the answers partition still needed: every other waiting one comes after it.

        Answers read after their ticket come after it; tickets wait in position order. So the
        first needed is the first ticket's, or an answer read before its ticket.
        """
        positions = [answer[2] for answers in self.early.values() for answer in answers.values()]
        if self.tickets:
            positions.append(self.tickets[0].position)
            positions += [ticket.first for ticket in self.joined_early.values()]
        return min(positions) if positions else None


class Decider(StateHandler):
    """Tickets and answers in, each payment decided and routed in its partition's offset order."""

    def __init__(self, output: Output, dead_letters: DeadLetters, lines: LineBuffer, rules: LiveRules,
                 lists: LiveLists | None, states: PartitionStates, router: Router,
                 on_rules: Callable[[RuleSet], None] = lambda ruleset: None, metrics: Metrics | None = None,
                 purger: Purger | None = None) -> None:
        super().__init__(output, lines, states, metrics, purger)
        self._dead_letters = dead_letters
        self._rules = rules
        self._lists = lists
        self._book = lists.book if lists is not None else LISTS
        self._router = router
        self._on_rules = on_rules
        self._merger = Merger(rules.current)
        self._lanes: dict[int, _Lane] = {}
        self.read = 0
        """Records handled (the idle end of the stage compares it with what was sent)."""
        self.decided = 0
        """Payments routed (the bench counts them)."""

    def begin_batch(self, batch: object) -> None:
        if self._lists is not None:
            self._lists.refresh()
        if self._rules.refresh():
            self._merger = Merger(self._rules.current)
            self._on_rules(self._rules.current)

    def forget(self) -> None:
        self._lanes.clear()

    def _lane(self, partition: int) -> _Lane:
        lane = self._lanes.get(partition)
        if lane is None:
            progress = self.progress(partition)
            done = progress.done.get(partition) if progress is not None else None
            lane = self._lanes[partition] = _Lane(done[0] if done is not None else -1)
        return lane

    def handle(self, record: Record) -> None:
        self.read += 1
        lane = self._lane(record.partition)
        try:
            header = next((value for name, value in record.headers or () if name == TICKET), None)
            if header is not None:
                ticket = _Ticket(record, orjson.loads(header))
                if ticket.offset <= lane.decided or ticket.offset in lane.by_offset:
                    return  # decided already, or read twice (at-least-once)
                lane.take(ticket)
            else:
                offset, group, fired, notes = orjson.loads(record.value or b"")
                offset, group = int(offset), int(group)
                if offset <= lane.decided:
                    return
                answer = (fired_from(fired), tuple(str(n) for n in notes), record.offset)
                pending = lane.by_offset.get(offset)
                if pending is not None:
                    pending.answers[group] = answer
                else:
                    lane.early.setdefault(offset, {})[group] = answer
        except (ValueError, TypeError) as exc:  # written by the anchor and the key stage: never expected
            self._dead_letters.send(record, f"not a ticket or an answer: {exc}")
            self._lines.add("dead-lettered", None)
            return
        self._decide(record.partition, lane)

    def _decide(self, partition: int, lane: _Lane) -> None:
        tickets = lane.tickets
        while tickets and len(tickets[0].answers) >= tickets[0].probes:
            ticket = tickets.popleft()
            del lane.by_offset[ticket.offset]
            lane.joined_early.pop(ticket.offset, None)
            fired, notes = ticket.fired, ticket.notes
            for group in sorted(ticket.answers):
                more, more_notes, _ = ticket.answers[group]
                fired += more
                notes += more_notes
            decision = self._merger.decision(fired, notes)
            if self._book.leveled:
                try:
                    hits = self._book.hits(decode(ticket.value))
                except InvalidPayment:  # read by the anchor: never expected
                    hits = ()
                if hits:
                    decision = decision.with_lists(hits)
            self._router.send(decision, ticket.key, ticket.value, partition, ticket.timestamp, ticket.payment_type)
            lane.decided = ticket.offset
            self.decided += 1

    def save(self) -> None:
        for partition, lane in self._lanes.items():
            if partition in self._states.tables and lane.decided >= 0:
                self._states.tables[partition].put(PROGRESS_KEY, Progress(done={partition: (lane.decided, 0)}))

    def hold_back(self, offsets: dict[int, int]) -> dict[int, int]:
        held = dict(offsets)
        for partition, lane in self._lanes.items():
            first = lane.first_position()
            if first is not None and partition in held:
                held[partition] = min(held[partition], first)
        return held
