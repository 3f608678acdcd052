"""Aggregates over keys other than the account: each computed where that key's payments meet, then carried to the decision.

Payments are keyed, and so partitioned, by account: a rule grouped by the
account (alone or with other fields, e.g. ``[ACCOUNT, TO]``) finds all of a
key's payments in one partition. A rule grouped by another key (``DEVICE``,
``TO``, ``[DEVICE, MERCHANT]``...) would see only the payments of that key
that share a partition with it. So, as Kafka Streams and the Flink fraud demo
do, the detector re-keys: for every such group key G (in sorted order) the
payments go through an internal topic partitioned by G, where a stage keeps
G's aggregates, evaluates G's rules and adds what fired to the record, before
the next key's topic and, last, a topic partitioned as the payments were,
where the account's stage decides with every key's reasons:

    payments ──re-key──▶ <group>-by-DEVICE-repartition ──DEVICE rules──▶ <group>-by-TO-repartition
             ──TO rules──▶ <group>-by-ACCOUNT-repartition ──account rules, decision──▶ fraud / legit

Each stage is a consume-transform-produce loop with its own consumer group,
transactional producer and state store (exactly-once end to end: every hop
commits its output, its state and its input offsets in one transaction). The
first stage reads the payments as the detector's group, so its offsets carry
on when rules grouped by another key are added. A hop costs about one commit
interval of latency (a record is visible downstream once its transaction
commits), plus a produce and a fetch.

Internal records keep the payment's value byte for byte, keyed by the group
key's value, with headers: ``origin.partition``, ``origin.key`` (absent when
the payment had none), ``origin.ts`` (its record timestamp) and ``features``
(JSON: the rules that fired upstream, ``[id, version, reason]``, and notes).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .clients import Batch, Consumer, Record
from .config import Settings, require
from .payment import InvalidPayment, decode, event_time
from .rules import Decision, Engine, FiredRule, RuleError, RuleSet
from .rules.definitions import group_label
from .stage import DeadLetters, LineBuffer, Output, decode_or_reject
from .state import PartitionStates

log = logging.getLogger("fraud_detector")

ACCOUNT = "ACCOUNT"
ORIGIN_PARTITION, ORIGIN_KEY, ORIGIN_TS, FEATURES = "origin.partition", "origin.key", "origin.ts", "features"


def partition_local(group_by: tuple[str, ...] | None) -> bool:
    """Whether a rule's group key is found whole in one payments partition (payments are keyed by account)."""
    return group_by is None or ACCOUNT in group_by


def rekeyed_groups(ruleset: RuleSet) -> tuple[tuple[str, ...], ...]:
    """The group keys of active rules that need their own partitioning, in the order their stages run."""
    return tuple(sorted({rule.group_by for rule in ruleset.active if rule.group_by and not partition_local(rule.group_by)}))


def repartition_topic(group_id: str, fields: tuple[str, ...]) -> str:
    """``<group>-by-DEVICE-repartition``; ``by-ACCOUNT`` is the topic the decision is made from."""
    return f"{group_id}-by-{group_label(fields).replace(',', '+')}-repartition"


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a re-keyed record: CRC-32 of its key, so that both client libraries agree."""
    return zlib.crc32(key) % partitions


def rules_of(ruleset: RuleSet, fields: tuple[str, ...] | None) -> RuleSet:
    """The rules a stage evaluates: those grouped by ``fields``; with None, the decision's (partition-local) ones."""
    if fields is None:
        kept = tuple(rule for rule in ruleset.rules if partition_local(rule.group_by))
    else:
        kept = tuple(rule for rule in ruleset.rules if rule.group_by == fields)
    return ruleset.with_rules(kept)


@dataclass(frozen=True)
class Hop:
    """One stage before the decision: reads ``source`` (keyed by ``fields``, None: the payments), writes ``target``."""

    fields: tuple[str, ...] | None
    source: str
    target: str
    group_id: str
    next_fields: tuple[str, ...] | None
    """How ``target`` is keyed; None: as the payments (the decision's topic)."""


def plan(settings: Settings, groups: Sequence[tuple[str, ...]]) -> list[Hop]:
    """The stages before the decision for these re-keyed groups (none when there are none)."""
    if not groups:
        return []
    group_id = require(settings.consumer, "consumer").group_id or "fraud-detector"
    keys: list[tuple[str, ...] | None] = [None, *groups]
    hops = []
    for n, fields in enumerate(keys):
        nxt = keys[n + 1] if n + 1 < len(keys) else None
        source = settings.topics.payments if fields is None else repartition_topic(group_id, fields)
        target = repartition_topic(group_id, nxt if nxt is not None else (ACCOUNT,))
        hops.append(Hop(fields, source, target, group_id if fields is None else f"{group_id}-by-{group_label(fields)}", nxt))
    return hops


def decision_topic(settings: Settings) -> str:
    return repartition_topic(require(settings.consumer, "consumer").group_id or "fraud-detector", (ACCOUNT,))


def stage_settings(settings: Settings, source: str, group_id: str, suffix: str | None) -> Settings:
    """A stage's settings: its input topic and group; its own transactional id when one was given."""
    consumer = replace(require(settings.consumer, "consumer"), group_id=group_id)
    if suffix:
        consumer = replace(consumer, quiet=True)  # only the decision prints
    delivery = settings.delivery
    if delivery is not None and delivery.transactional_id and suffix:
        delivery = replace(delivery, transactional_id=f"{delivery.transactional_id}-{suffix}")
    return replace(settings, topics=replace(settings.topics, payments=source), consumer=consumer, delivery=delivery)


def carried(record: Record) -> tuple[int, bytes | None, int, list[Any], list[str]]:
    """From an internal record's headers: origin partition, key, timestamp, fired rules upstream, notes."""
    headers = dict(record.headers or ())
    features = orjson.loads(headers[FEATURES]) if FEATURES in headers else {}
    return (int(headers[ORIGIN_PARTITION]), headers.get(ORIGIN_KEY), int(headers.get(ORIGIN_TS, b"0")),
            list(features.get("fired", [])), list(features.get("notes", [])))


def with_carried(decision: Decision, ruleset: RuleSet, fired: list[Any], notes: list[str]) -> Decision:
    """The account stage's decision with what upstream stages found, in the rule set's order, scored with its weights."""
    if not fired and not notes:
        return decision
    found = {f.id: f for f in decision.fired}
    for rule_id, version, reason in fired:
        rule = ruleset.get(rule_id)
        if rule is not None and rule.mode != "disabled":
            found[rule_id] = FiredRule(rule.id, int(version), rule.mode, rule.weight, str(reason))
    order = {rule.id: n for n, rule in enumerate(ruleset.rules)}
    merged = tuple(sorted(found.values(), key=lambda f: order.get(f.id, len(order))))
    score = sum(f.weight for f in merged if f.mode == "enabled")
    return Decision(score, decision.threshold, merged, (*notes, *decision.notes), decision.review_threshold)


class FeatureStage:
    """One stage before the decision: the re-keyed group's rules on its own partitions, then on to the next topic."""

    def __init__(self, hop: Hop, output: Output, dead_letters: DeadLetters, lines: LineBuffer,
                 ruleset_of: Callable[[], RuleSet], states: PartitionStates | None, partitions: int) -> None:
        self._hop = hop
        self._output = output
        self._dead_letters = dead_letters
        self._lines = lines
        self._ruleset_of = ruleset_of
        self._states = states
        self._partitions = partitions
        self._ruleset: RuleSet | None = None
        self._engine: Engine | None = None
        self._next = _Key(hop.next_fields)

    def _current(self) -> Engine | None:
        ruleset = self._ruleset_of()
        if ruleset is not self._ruleset:
            self._ruleset = ruleset
            rules = rules_of(ruleset, self._hop.fields) if self._hop.fields is not None else None
            self._engine = Engine(rules) if rules is not None and rules.rules else None
        return self._engine

    def begin_batch(self, batch: Batch) -> None:
        pass

    def partitions_assigned(self, partitions: set[int]) -> None:
        if self._states is not None:
            self._states.assigned(partitions)

    def waiting(self) -> set[int]:
        return self._states.waiting() if self._states is not None else set()

    def restore(self, consumer: Consumer, budget_s: float) -> None:
        if self._states is not None:
            self._states.restore(consumer, budget_s)

    def prepare_commit(self, offsets: dict[int, int]) -> None:
        if self._states is not None:
            self._states.send_changes(lambda topic, key, value, partition: self._output.send(topic, key, value, None, partition),
                                      offsets)

    def seal(self) -> None:
        if self._states is not None:
            self._states.seal()
        self._lines.seal()

    def emit(self) -> None:
        if self._states is not None:
            self._states.committed()
        self._lines.emit()

    def discard(self) -> None:
        if self._states is not None:
            self._states.discard()
        self._lines.discard()

    def handle(self, record: Record) -> None:
        if self._hop.fields is None:  # the first stage: the payments as they were sent
            payment = decode_or_reject(record, self._dead_letters, self._lines)
            if payment is None:
                return
            origin, key, timestamp = record.partition, record.key, record.timestamp
            fired: list[Any] = []
            notes: list[str] = []
        else:
            try:
                payment = decode(record.value)
            except InvalidPayment as exc:  # written by the first stage, which read it: never expected
                self._dead_letters.send(record, str(exc))
                self._lines.add("dead-lettered", None)
                return
            origin, key, timestamp, fired, notes = carried(record)
            engine = self._current()
            if engine is not None and self._states is not None:
                at = event_time(payment, timestamp)
                decision = engine.decide(payment, at, self._states.tables[record.partition])
                fired += [[f.id, f.version, f.reason] for f in decision.fired]
                notes += list(decision.notes)
        headers = [(ORIGIN_PARTITION, str(origin).encode()), (ORIGIN_TS, str(timestamp).encode())]
        if key is not None:
            headers.append((ORIGIN_KEY, key))
        if fired or notes:
            headers.append((FEATURES, orjson.dumps({"fired": fired, "notes": notes})))
        next_key = self._next.of(payment)
        partition = origin if self._hop.next_fields is None or next_key is None else partition_of(next_key, self._partitions)
        self._output.send(self._hop.target, next_key if self._hop.next_fields is not None else key, record.value, headers,
                          partition)
        self._lines.add("forwarded", None)


class _Key:
    """The value a record is keyed by on the next topic (None: the payment lacks a field of the key)."""

    def __init__(self, fields: tuple[str, ...] | None) -> None:
        from .rules.conditions import attribute_name

        self._attrs = tuple(attribute_name(f) for f in fields) if fields else ()

    def of(self, payment: Any) -> bytes | None:
        if not self._attrs:
            return None
        values = [getattr(payment, a) for a in self._attrs]
        if None in values:
            return None
        return "\x1f".join(values).encode()


def refuse_new_groups(running: tuple[tuple[str, ...], ...]) -> Callable[[RuleSet], None]:
    """A rules check: a rule grouped by a key this detector does not re-key needs a restart."""
    def check(ruleset: RuleSet) -> None:
        for rule in ruleset.active:
            if rule.group_by and not partition_local(rule.group_by) and rule.group_by not in running:
                raise RuleError("", f"it groups by {group_label(rule.group_by)}, which the running detector does not re-key "
                                    "by: put it in the rules file and restart the detector", rule.id)
    return check


class Chain:
    """When the stages stop: a stop request stops them all; with an idle timeout only the first stage (reading the
    payments) times out on its own, and each later one once the stage before it has ended and it has had no
    record for that long itself, so that none ends before what is upstream of it has reached it."""

    def __init__(self, stop: threading.Event, stages: int, idle_timeout_s: float | None) -> None:
        self.stops = [threading.Event() for _ in range(stages)]
        self._idle_timeout_s = idle_timeout_s
        threading.Thread(target=self._forward, args=(stop,), name="stop-stages", daemon=True).start()

    def _forward(self, stop: threading.Event) -> None:
        stop.wait()
        for each in self.stops:
            each.set()

    def idle_timeout_s(self, index: int) -> float | None:
        return self._idle_timeout_s if index == 0 else None

    def follow(self, index: int, before: threading.Thread, handled: Callable[[], int], sent: Callable[[], int]) -> None:
        """Stage ``index`` ends once ``before`` (the stage upstream) has ended, it has handled all ``sent`` to it
        this run, and it has had no record for ``idle_timeout_s``."""
        if self._idle_timeout_s is None:
            return

        def wait() -> None:
            before.join()
            seen = handled()
            while not self.stops[index].wait(self._idle_timeout_s):
                if handled() == seen and seen >= sent():
                    self.stops[index].set()
                seen = handled()

        threading.Thread(target=wait, name=f"idle-stage-{index}", daemon=True).start()


def stop_all_on_failure(stop: threading.Event, status: list[int], index: int, run: Callable[[], int]) -> None:
    """Run one stage; if it fails, the others stop too."""
    status[index] = run()
    if status[index]:
        stop.set()
