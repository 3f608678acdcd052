"""One decision path: which rules run where, in which order, and one engine that decides a stream that way.

Payments are keyed, and so partitioned, by account. The decision of a
payment is defined over the payments read before it in this order, whatever
runs it (the detector's stages, on either client, or the backtest):

- an input partition's payments are taken in offset order. Its *sequence
  time* at a payment is the latest event time of the partition's payments up
  to that one: it never goes back;
- the rules grouped by the account (alone or with other fields) and the
  rules of the payment alone decide each payment in its partition's offset
  order, in one table per input partition;
- for every other group key (``DEVICE``, ``TO``, ``[DEVICE, MERCHANT]``) that
  one of its rules may read for the payment, a *probe* (the key and the
  fields those rules read) goes to key partition ``crc32(key) % partitions``.
  A rule cannot read a key when its ``when`` reads only the key's fields and
  fails (``mule-fan-in`` for ``TO=mom``): no probe, no state;
- a key partition takes its probes in (sequence time, origin partition,
  origin offset, group) order, in one table per key partition;
- the decision is what fired in each place, merged in the rule set's order
  and scored with its weights (``Merger``).

``reference`` is that definition as one function over a whole stream. The
backtest decides with it, and the tests hold the detector's decisions to it.
Lists and snoozes are live settings applied on top by the detector (their
matches are named in the reasons).

Pure Python: no Kafka, no clock.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import orjson

from ..errors import RuleError
from ..payment import Payment
from .aggregates import SEPARATOR, MemoryTable
from .conditions import All, AnyOf, Compare, Condition, InList, Not, compile_condition
from .definitions import Rule, RuleSet
from .engine import Decision, Engine, FiredRule
from .fields import attribute_name

ACCOUNT = "ACCOUNT"

Fired = tuple[tuple[str, int, str], ...]
"""What fired in one place: ``(rule id, version, reason)`` per rule, as the wire carries it."""


def partition_local(group_by: tuple[str, ...] | None) -> bool:
    """Whether a rule's group key is found whole in one payments partition (payments are keyed by account)."""
    return group_by is None or ACCOUNT in group_by


def rekeyed_groups(ruleset: RuleSet) -> tuple[tuple[str, ...], ...]:
    """The group keys of active rules that need their own partitioning, sorted: their probes' group indexes."""
    return tuple(sorted({rule.group_by for rule in ruleset.active if rule.group_by and not partition_local(rule.group_by)}))


def rules_of(ruleset: RuleSet, fields: tuple[str, ...] | None) -> RuleSet:
    """The rules one place evaluates: those grouped by ``fields``; with None, the account's (partition-local) ones."""
    if fields is None:
        kept = tuple(rule for rule in ruleset.rules if partition_local(rule.group_by))
    else:
        kept = tuple(rule for rule in ruleset.rules if rule.group_by == fields)
    return ruleset.with_rules(kept)


def refuse_new_groups(running: Sequence[tuple[str, ...]]) -> Callable[[RuleSet], None]:
    """A rules check: a rule grouped by a key the running detector does not re-key by needs a restart."""
    def check(ruleset: RuleSet) -> None:
        for rule in ruleset.active:
            if rule.group_by and not partition_local(rule.group_by) and rule.group_by not in running:
                raise RuleError("", f"it groups by {','.join(rule.group_by)}, which the running detector does not re-key "
                                    "by: put it in the rules file and restart the detector", rule.id)
    return check


def partition_of(key: bytes, partitions: int) -> int:
    """The key partition of a probe: CRC-32 of its key, so that both client libraries agree."""
    return zlib.crc32(key) % partitions


def condition_fields(condition: Condition | None) -> frozenset[str]:
    """The payment fields a condition reads."""
    if condition is None:
        return frozenset()
    if isinstance(condition, Compare | InList):
        return frozenset((condition.field,))
    if isinstance(condition, All | AnyOf):
        return frozenset().union(*(condition_fields(part) for part in condition.parts))
    if isinstance(condition, Not):
        return condition_fields(condition.part)
    raise TypeError(f"unknown condition {condition!r}")


def rule_fields(rule: Rule) -> frozenset[str]:
    """Every payment field a rule reads: its ``when``, its group, what it aggregates and filters, its sequence."""
    found = set(condition_fields(rule.when)) | set(rule.group_by or ())
    if rule.aggregate is not None:
        found |= condition_fields(rule.aggregate.where)
        if rule.aggregate.field:
            found.add(rule.aggregate.field)
    if rule.sequence is not None:
        found |= condition_fields(rule.sequence.first) | condition_fields(rule.sequence.then)
    return frozenset(found)


_BLANK = {"date": "", "time": "", "payment_type": "", "amount": 0, "to": ""}
"""A probe's payment: the fields its rules read, these where they read none of the required ones."""


class KeyGroup:
    """One re-keyed group: its rules, the fields they read, and which payments need a probe to it."""

    def __init__(self, index: int, fields: tuple[str, ...], ruleset: RuleSet) -> None:
        self.index = index
        self.fields = fields
        self.ruleset = rules_of(ruleset, fields)
        active = self.ruleset.active
        self.names = tuple(sorted(set().union(*(rule_fields(rule) for rule in active)) | set(fields)))
        """The fields a probe carries (wire names)."""
        self._attrs = tuple(attribute_name(name) for name in self.names)
        self._key_attrs = tuple(attribute_name(name) for name in fields)
        self._prefix = f"{','.join(fields)}=".encode()
        gates: list[Callable[[Payment], bool]] = []
        for rule in active:
            if rule.when is None or not condition_fields(rule.when) <= set(fields):
                gates = []  # this rule may read any key: every payment with the key is probed
                break
            gates.append(compile_condition(rule.when))
        self._gates = tuple(gates)
        """When every rule's ``when`` reads only the key: the compiled ``when``s (a key none of them holds for is
        never read, so it is neither probed nor kept)."""
        self._live = bool(active)
        """Whether some rule of the group is active (a group whose rules were all removed is probed no more)."""

    def key(self, payment: Payment) -> bytes | None:
        """The probe's key (``DEVICE=D1``, the engine's key), or None: no field of it, or no rule can read it."""
        if not self._live:
            return None
        values = [getattr(payment, attr) for attr in self._key_attrs]
        if None in values:
            return None
        if self._gates and not any(gate(payment) for gate in self._gates):
            return None
        return self._prefix + SEPARATOR.join(values).encode()

    def values(self, payment: Payment) -> list[Any]:
        return [getattr(payment, attr) for attr in self._attrs]

    def payment(self, values: Sequence[Any]) -> Payment:
        """The payment a key stage decides: the probe's fields, blank elsewhere."""
        fields = dict(_BLANK)
        fields.update(zip(self._attrs, values, strict=True))
        return cast(Any, Payment)(**fields)


class Probes:
    """The re-keyed groups of a rule set, in order (a probe's group index is its place here).

    ``groups``: the groups a running detector was started with (a rule set published since may have fewer; the
    indexes stay), by default the rule set's.
    """

    def __init__(self, ruleset: RuleSet, groups: Sequence[tuple[str, ...]] | None = None) -> None:
        fixed = rekeyed_groups(ruleset) if groups is None else tuple(groups)
        self.groups = tuple(KeyGroup(n, fields, ruleset) for n, fields in enumerate(fixed))

    def of(self, payment: Payment) -> list[tuple[KeyGroup, bytes]]:
        """The probes a payment sends: its group and key per group one of whose rules may read it."""
        found = []
        for group in self.groups:
            key = group.key(payment)
            if key is not None:
                found.append((group, key))
        return found


def fired_of(decision: Decision) -> Fired:
    return tuple((f.id, f.version, f.reason) for f in decision.fired)


class Merger:
    """One decision from what fired in each place: rules in the rule set's order, scored with its weights."""

    KEPT = 4096

    def __init__(self, ruleset: RuleSet) -> None:
        self._ruleset = ruleset
        self._order = {rule.id: n for n, rule in enumerate(ruleset.rules)}
        self._cache: dict[tuple[Fired, tuple[str, ...]], Decision] = {}

    def decision(self, fired: Fired, notes: tuple[str, ...]) -> Decision:
        """``fired``: every place's rules (id, version, reason); ``notes``: the account's, then each group's in order."""
        key = (fired, notes)
        found = self._cache.get(key)
        if found is not None:
            return found
        rules: list[FiredRule] = []
        for rule_id, version, reason in fired:
            rule = self._ruleset.get(rule_id)
            if rule is not None and rule.mode != "disabled":
                rules.append(FiredRule(rule.id, int(version), rule.mode, rule.weight, str(reason)))
        rules.sort(key=lambda f: self._order.get(f.id, len(self._order)))
        score = sum(f.weight for f in rules if f.mode == "enabled")
        found = Decision(score, self._ruleset.threshold, tuple(rules), notes, self._ruleset.review_threshold)
        if len(self._cache) >= self.KEPT:
            self._cache.clear()
        self._cache[key] = found
        return found


# --- the wire of the decision path: probes, markers, answers, tickets (compact JSON arrays) -------------------

def encode_probe(origin: int, offset: int, seq: int, event_ms: int, group: int, values: list[Any]) -> bytes:
    return orjson.dumps([origin, offset, seq, event_ms, group, values])


def encode_marker(origin: int, seq: int) -> bytes:
    """A partition's promise: none of its later probes has an earlier sequence time."""
    return orjson.dumps([origin, seq])


def encode_answer(offset: int, group: int, fired: Fired, notes: tuple[str, ...]) -> bytes:
    return orjson.dumps([offset, group, fired, notes])


def encode_ticket(offset: int, timestamp: int, probes: int, payment_type: str, fired: Fired, notes: tuple[str, ...]) -> bytes:
    """The header a payment travels with to its decision: its offset, time, probes sent, and the account's findings."""
    return orjson.dumps([offset, timestamp, probes, payment_type, fired, notes])


def fired_from(raw: Any) -> Fired:
    return tuple((str(rule_id), int(version), str(reason)) for rule_id, version, reason in raw)


# --- the definition, as one function ------------------------------------------------------------------------

Item = tuple[int, int, Payment, int]
"""``(partition, offset, payment, event time)`` of one readable payment."""


def reference(items: Iterable[Item], ruleset: RuleSet, partitions: int) -> dict[tuple[int, int], Decision]:
    """Every payment's decision by ``(partition, offset)``, as the module's doc defines it.

    ``partitions``: the key partitions (the detector's internal topics are partitioned as its input).
    """
    account = Engine(rules_of(ruleset, None))
    probes = Probes(ruleset)
    engines = [Engine(group.ruleset) for group in probes.groups]
    by_partition: dict[int, list[tuple[int, Payment, int]]] = defaultdict(list)
    for partition, offset, payment, event_ms in items:
        by_partition[partition].append((offset, payment, event_ms))
    found: dict[tuple[int, int], tuple[Fired, tuple[str, ...]]] = {}
    entries: dict[int, list[tuple[int, int, int, int, int, Payment]]] = defaultdict(list)
    for partition, payments in by_partition.items():
        payments.sort(key=lambda item: item[0])
        table = MemoryTable()
        seq: int | None = None
        for offset, payment, event_ms in payments:
            seq = event_ms if seq is None else max(seq, event_ms)
            decision = account.decide(payment, event_ms, table)
            found[(partition, offset)] = (fired_of(decision), decision.notes)
            for group, key in probes.of(payment):
                probe = group.payment(orjson.loads(orjson.dumps(group.values(payment))))  # as the wire carries it
                entries[partition_of(key, partitions)].append((seq, partition, offset, group.index, event_ms, probe))
    answers: dict[tuple[int, int], list[tuple[int, Fired, tuple[str, ...]]]] = defaultdict(list)
    for queue in entries.values():
        queue.sort(key=lambda entry: entry[:4])
        table = MemoryTable()
        for _, partition, offset, index, event_ms, probe in queue:
            decision = engines[index].decide(probe, event_ms, table)
            answers[(partition, offset)].append((index, fired_of(decision), decision.notes))
    merger = Merger(ruleset)
    decided = {}
    for where, (fired, notes) in found.items():
        for _, more, more_notes in sorted(answers.get(where, ()), key=lambda answer: answer[0]):
            fired += more
            notes += more_notes
        decided[where] = merger.decision(fired, notes)
    return decided
