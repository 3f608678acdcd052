"""The anchor: the first stage of the decision path, over the payments as they were sent.

Decodes each payment once, runs the account's rules in offset order, and
sends one compact probe per key a rule may read to the probes topic and the
payment with the account's findings (its ticket) to the answers topic, on the
payment's own partition (fraud_pipeline.rules.order, topology.plan).

With each commit, and while a caught-up partition is quiet, it sends every
key partition a marker: the payments partition's sequence time, which none
of its later probes goes below. A key partition takes its probes once every
payments partition has passed them, so a quiet partition must not hold the
others back: once it has been read to its end and had no payment for
IDLE_AFTER_S, its marker moves with the clock, IDLE_MARGIN_MS behind. A
payment that comes to it later than that is still decided, in the order it
came, and says so in its reasons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..clients import Consumer, Record, TopicPartition
from ..payment import event_time
from ..rules import Engine, RuleSet
from ..rules.order import Probes, encode_marker, encode_probe, encode_ticket, fired_of, partition_of, rules_of
from ..stage import BatchError, DeadLetters, LineBuffer, Output, decode_or_reject
from ..state import PartitionStates
from .handler import StateHandler
from .plan import Plan
from .progress import PROGRESS_KEY, Progress

log = logging.getLogger("fraud_detector")

TICKET = "ticket"
"""The header of a payment on its way to its decision (rules.order.encode_ticket)."""
IDLE_AFTER_S = 0.5
"""How long a partition read to its end goes without a payment before its marker follows the clock."""
IDLE_MARGIN_MS = 2_000
"""How far behind the clock a quiet partition's marker stays: a payment sent to it later, with an event time
up to this much older than when it is read, still comes in order."""


class Anchor(StateHandler):
    """Payments in, probes and tickets out; the account's state in the payments' changelog."""

    def __init__(self, plan: Plan, output: Output, dead_letters: DeadLetters, lines: LineBuffer,
                 ruleset_of: Callable[[], RuleSet], states: PartitionStates, partitions: int,
                 markers: Output) -> None:
        super().__init__(output, lines, states)
        self._plan = plan
        self._dead_letters = dead_letters
        self._ruleset_of = ruleset_of
        self._partitions = partitions
        self._markers = markers
        """A producer outside the stage's transactions, for the markers of quiet partitions (sent when all is committed)."""
        self._ruleset: RuleSet | None = None
        self._engine: Engine
        self._probes: Probes
        self._seq: dict[int, int | None] = {}
        """Per partition: its sequence time (None: no payment yet), as read; saved into its table before a commit."""
        self._marked: dict[int, int] = {}
        """Per partition: the last marker sent."""
        self._saved: dict[int, int] = {}
        """Per partition: the sequence time last put into its table."""
        self._last_read: dict[int, float] = {}
        self._idle_checked = 0.0
        self._current()

    def _current(self) -> None:
        ruleset = self._ruleset_of()
        if ruleset is not self._ruleset:
            self._ruleset = ruleset
            self._engine = Engine(rules_of(ruleset, None))
            self._probes = Probes(ruleset, self._plan.groups)

    def begin_batch(self, batch: object) -> None:
        self._current()

    def forget(self) -> None:
        self._seq.clear()
        self._marked.clear()
        self._saved.clear()

    def _sequence(self, partition: int) -> int | None:
        if partition in self._seq:
            return self._seq[partition]
        progress = self.progress(partition)
        seq = self._seq[partition] = progress.seq if progress is not None else None
        return seq

    def handle(self, record: Record) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines)
        if payment is None:
            return
        partition, offset = record.partition, record.offset
        at = event_time(payment, record.timestamp)
        seq = self._sequence(partition)
        seq = self._seq[partition] = at if seq is None or at > seq else seq
        self._last_read[partition] = time.monotonic()
        decision = self._engine.decide(payment, at, self._states.tables[partition])
        send = self._output.send
        probes = self._probes.of(payment)
        for group, key in probes:
            send(self._plan.probes, key, encode_probe(partition, offset, seq, at, group.index, group.values(payment)), None,
                 partition_of(key, self._partitions))
            self._lines.add("probe", None)
        ticket = encode_ticket(offset, record.timestamp, len(probes), payment.payment_type, fired_of(decision), decision.notes)
        send(self._plan.answers, record.key, record.value, [(TICKET, ticket)], partition)
        self._lines.add("forwarded", None)

    def save(self) -> None:
        """The sequence times into the tables, and a marker of each that moved to every key partition."""
        for partition, seq in self._seq.items():
            if seq is None or partition not in self._states.tables or self._saved.get(partition) == seq:
                continue
            self._saved[partition] = seq
            self._states.tables[partition].put(PROGRESS_KEY, Progress(seq=seq))
            if seq > self._marked.get(partition, -1):
                self._marked[partition] = seq
                marker = encode_marker(partition, seq)
                for target in range(self._partitions):
                    self._output.send(self._plan.probes, None, marker, None, target)
                    self._lines.add("marker", None)

    def idle(self, consumer: Consumer) -> None:
        """Everything read is committed: quiet partitions read to their end get a marker that follows the clock."""
        now = time.monotonic()
        if now - self._idle_checked < IDLE_AFTER_S:
            return
        self._idle_checked = now
        owned = [p for p in self._states.tables if p not in self._states.waiting()]
        if not owned:
            return
        lags = consumer.lag([TopicPartition(self._plan.payments, p) for p in owned])
        clock = int(time.time() * 1000) - IDLE_MARGIN_MS
        sent = 0
        for partition in owned:
            quiet = now - self._last_read.setdefault(partition, now)
            lag = lags.get(TopicPartition(self._plan.payments, partition))
            if quiet < IDLE_AFTER_S or lag != 0:  # not read to its end, or its end not known yet (not fetched)
                continue
            seq = self._sequence(partition)
            mark = clock if seq is None else max(seq, clock)
            if self._marked.get(partition, -1) >= mark:
                continue
            self._marked[partition] = mark
            marker = encode_marker(partition, mark)
            for target in range(self._partitions):
                self._markers.send(self._plan.probes, None, marker, None, target)
                sent += 1
        if sent:
            try:
                self._markers.flush(timeout_s=10)
            except BatchError as exc:  # the next quiet spell sends them again
                log.warning("markers of quiet partitions not sent: %s", exc)
                self._marked.clear()
