"""The rule engine: a payment and its keys' aggregates in, an explained decision out.

Pure Python: no Kafka, no clock. The caller gives each payment's event time
and the EntityTable of its partition (fraud_pipeline.rules.aggregates); the
engine reads the keys' series, decides, then records the payment in them.

Score = the sum of the weights of the enabled rules that fire; the payment
is declined (fraud) when the score reaches the rule set's threshold, held for
review when it reaches its review threshold (if it has one), approved
otherwise; the lists a payment is on come on top (``Decision.with_lists``,
fraud_pipeline.rules.lists). Shadow rules are
evaluated and listed in the decision, and never change the score.

While a stateful rule's window reaches back before the table started
recording its series (a new table, a new rule), the decision carries a note
saying so: the rule sees only part of its window.
"""

from __future__ import annotations

import datetime
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

import orjson

from ..payment import Payment
from .aggregates import (
    ALLOWED_LATENESS_MS,
    META_KEY,
    SEPARATOR,
    Counts,
    Distinct,
    EntityTable,
    Firsts,
    KeyState,
    PartitionState,
    Series,
    Values,
    bucket_width_ms,
    new_series,
    series_id,
)
from .conditions import Condition, attribute_name, compile_condition, constant_explanation
from .definitions import Rule, RuleSet, group_label
from .lists import APPROVE, DECLINE, SNOOZE, ListHit, outcome

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class FiredRule:
    """One rule that fired, and why, e.g. ``burst@1: count=6 in 60s > 5 (ACCOUNT=ACC00042)``."""

    id: str
    version: int
    mode: str
    weight: float
    reason: str

    def describe(self) -> str:
        mode = f" [{self.mode}]" if self.mode in ("shadow", "snoozed") else ""
        return f"{self.id}@{self.version}{mode}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "mode": self.mode, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    score: float
    threshold: float
    fired: tuple[FiredRule, ...]
    notes: tuple[str, ...] = ()
    """What the decision could not see, e.g. a rule whose window is still filling."""
    review_threshold: float | None = None
    """From this score up to the threshold: held for review (None: the rule set has no review outcome)."""
    listed: tuple[ListHit, ...] = ()
    """The live list entries with a level the payment's fields are on (fraud_pipeline.rules.lists)."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False, hash=False)
    """to_json's answer, once made (an engine hands out one Decision per distinct decision)."""

    @property
    def outcome(self) -> str:
        """approve, review or decline: the score against the thresholds, then the lists (see rules.lists)."""
        if not self.listed and self.review_threshold is None:
            return DECLINE if self.score >= self.threshold - 1e-9 else APPROVE
        return outcome(self.score, self.threshold, self.review_threshold, self.listed)

    @property
    def fraud(self) -> bool:
        """Declined (routed to the fraud topic as in the original; a payment held for review is not)."""
        return self.outcome == DECLINE

    def enabled(self) -> tuple[FiredRule, ...]:
        return tuple(f for f in self.fired if f.mode == "enabled")

    def with_lists(self, hits: tuple[ListHit, ...]) -> Decision:
        """This decision with the payment's list hits (a new object: decisions of rules alone are shared).

        A snooze hit takes its rule out of the score: the rule stays listed, as ``snoozed``.
        """
        snoozed = {hit.rule for hit in hits if hit.level == SNOOZE}
        fired, score = self.fired, self.score
        if snoozed & {f.id for f in fired if f.mode == "enabled"}:
            fired = tuple(FiredRule(f.id, f.version, "snoozed", f.weight, f.reason) if f.id in snoozed and f.mode == "enabled"
                          else f for f in fired)
            score = sum(f.weight for f in fired if f.mode == "enabled")
        return Decision(score, self.threshold, fired, self.notes, self.review_threshold, hits)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "fraud": self.fraud, "score": self.score, "threshold": self.threshold,
            "rules": [fired.to_dict() for fired in self.fired],
        }
        if self.notes:
            data["notes"] = list(self.notes)
        if self.review_threshold is not None or self.listed:
            data["outcome"] = self.outcome
            if self.review_threshold is not None:
                data["review_threshold"] = self.review_threshold
            if self.listed:
                data["lists"] = [hit.to_dict() for hit in self.listed]
        return data

    def to_json(self) -> bytes:
        """The decision as compact JSON (made once per Decision object)."""
        data = self._json
        if data is None:
            data = orjson.dumps(self.to_dict())
            object.__setattr__(self, "_json", data)  # a cache, not a change: the decision's fields stay as they are
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Decision | None:
        """A decision read back from a routed record's DECISION field; None if absent or unreadable."""
        try:
            fired = tuple(
                FiredRule(str(r["id"]), int(r["version"]), str(r["mode"]), float(r["weight"]), str(r["reason"]))
                for r in data["rules"]
            )
            notes = data.get("notes", [])
            listed = data.get("lists", [])
            if not isinstance(notes, list) or not isinstance(listed, list):
                return None
            review = data.get("review_threshold")
            return cls(float(data["score"]), float(data["threshold"]), fired, tuple(str(n) for n in notes),
                       None if review is None else float(review), tuple(ListHit.from_dict(hit) for hit in listed))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return None


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def window_text(window_s: float) -> str:
    """A window as reasons show it: 60s, 90s, 1h, 24h, 30d."""
    if window_s >= 3600 and window_s % 3600 == 0:
        if window_s > 86400 and window_s % 86400 == 0:
            return f"{int(window_s // 86400)}d"
        return f"{int(window_s // 3600)}h"
    return f"{_show(window_s)}s"


@lru_cache(maxsize=256)
def _utc(ms: int) -> str:
    """An instant as reasons show it; cached: a window still filling names the same start in every decision."""
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the compiled rule set ----------------------------------------------------------------------------

DECISIONS_KEPT = 4096
"""Distinct decisions an engine keeps to hand out again (then it starts over)."""

_PLAIN, _AGGREGATE, _SEQUENCE = 0, 1, 2
_COUNT, _SUM, _AVG, _MIN, _MAX, _DISTINCT, _AGE, _ZSCORE = range(8)
_FUNCTION_CODES = {"count": _COUNT, "sum": _SUM, "avg": _AVG, "min": _MIN, "max": _MAX, "distinct": _DISTINCT,
                   "age": _AGE, "zscore": _ZSCORE}


class _SeriesPlan:
    """One series the engine records: which payments (``where``), what of them (``attr``), in which buckets."""

    __slots__ = ("attr", "index", "kind", "sid", "test", "where")

    def __init__(self, sid: str, kind: str, attr: str | None, where: Condition | None, index: int) -> None:
        self.sid = sid
        self.kind = kind
        self.attr = attr
        self.where = where
        self.test = None if where is None else compile_condition(where)
        """``where.holds``, compiled."""
        self.index = index


class _Group:
    """A group_by: how a payment's key is made, and the series kept under it."""

    __slots__ = ("attrs", "fields", "prefix", "series")

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self.attrs = tuple(attribute_name(f) for f in fields)
        self.prefix = f"{group_label(fields)}=".encode()
        self.series: list[_SeriesPlan] = []

    def key(self, payment: Payment) -> bytes | None:
        if len(self.attrs) == 1:
            value = getattr(payment, self.attrs[0])
            return None if value is None else self.prefix + value.encode()
        values = [getattr(payment, a) for a in self.attrs]
        if None in values:
            return None
        return self.prefix + SEPARATOR.join(values).encode()

    def describe(self, key: bytes) -> str:
        """``ACCOUNT=A`` or ``ACCOUNT=A, TO=stranger``."""
        values = key[len(self.prefix):].decode().split(SEPARATOR)
        return ", ".join(f"{f}={v}" for f, v in zip(self.fields, values, strict=True))


class _Check:
    """One active rule, compiled."""

    __slots__ = ("attr", "compare", "fn", "group", "index", "kind", "label", "min_count", "op", "reason", "rule", "series",
                 "sid", "since_id", "test", "then", "then_test", "value", "when", "width", "window", "window_text")

    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.index = index
        self.when = rule.when
        self.test = None if rule.when is None else compile_condition(rule.when)
        """``when.holds``, compiled."""
        self.reason = None if rule.when is None else constant_explanation(rule.when)
        """``when.explain``'s text when it is the same for every payment (``PAYMENT_TYPE == BITCOIN``)."""
        self.kind = _PLAIN
        self.group = -1
        self.series = -1
        self.sid = self.since_id = self.label = self.window_text = self.op = ""
        self.fn = -1
        self.attr: str | None = None
        self.window = self.width = self.min_count = 0
        self.compare: Callable[[Any, Any], bool] = operator.eq
        self.value = 0.0
        self.then: Condition | None = None
        self.then_test: Callable[[Payment], bool] | None = None


class Engine:
    """Decides payments with one rule set; swap the engine to change the rules, keep the tables."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._nothing = Decision(0.0, ruleset.threshold, (), (), ruleset.review_threshold)
        self._threshold = ruleset.threshold
        self._review_threshold = ruleset.review_threshold
        groups: dict[tuple[str, ...], _Group] = {}
        plans: dict[str, _SeriesPlan] = {}
        checks: list[_Check] = []
        since_ids: set[str] = set()
        for index, rule in enumerate(ruleset.active):
            check = _Check(rule, index)
            checks.append(check)
            if rule.aggregate is None and rule.sequence is None:
                continue
            fields = rule.group_by
            assert fields is not None
            group = groups.get(fields)
            if group is None:
                group = groups[fields] = _Group(fields)
            window = rule.window_ms
            width = bucket_width_ms(window)
            if rule.aggregate is not None:
                agg = rule.aggregate
                fn = _FUNCTION_CODES[agg.function]
                kind = "d" if fn == _DISTINCT else "v" if agg.field and fn not in (_COUNT, _AGE) else "n"
                attr = attribute_name(agg.field) if kind != "n" and agg.field else None
                condition = agg.where
                check.kind, check.fn, check.attr = _AGGREGATE, fn, attr
                check.compare, check.op, check.value, check.min_count = _COMPARE[agg.op], agg.op, agg.value, agg.min_count
                check.label = agg.function if kind == "n" else f"{agg.function}({agg.field})"
                check.window_text = window_text(agg.window_s)
                sid = series_id(kind, width, agg.field if kind != "n" else None,
                                condition.describe() if condition else None)
            else:
                seq = rule.sequence
                assert seq is not None
                kind, attr, condition = "s", None, seq.first
                check.kind, check.then, check.window_text = _SEQUENCE, seq.then, window_text(seq.within_s)
                check.then_test = compile_condition(seq.then)
                sid = series_id("s", width, None, condition.describe())
            plan = plans.get(sid)
            if plan is None:
                plan = plans[sid] = _SeriesPlan(sid, kind, attr, condition, len(plans))
            if plan not in group.series:
                group.series.append(plan)
            check.group = list(groups).index(fields)
            check.series, check.sid, check.window, check.width = plan.index, sid, window, width
            check.since_id = f"{group_label(fields)}/{sid}"
            since_ids.add(check.since_id)
        self._checks = tuple(checks)
        self._decisions: dict[tuple[tuple[tuple[int, str], ...], tuple[str, ...]], Decision] = {}
        self._groups = tuple(groups.values())
        self._plans = tuple(plans.values())
        self._since_ids = tuple(sorted(since_ids))
        self._signature = " ".join(self._since_ids)
        self.group_keys: tuple[tuple[str, ...], ...] = tuple(groups)
        """The group_by field tuples the active stateful rules use."""
        self.stateful: bool = bool(self._groups)
        """Whether some active rule reads the history of a key."""

    def decide(self, payment: Payment, event_ms: int, table: EntityTable | None = None) -> Decision:
        """Decide one payment at its event time, then record it in ``table``.

        ``table`` may be None only for a rule set without stateful rules. Give
        a stateless engine the table anyway when there is one: it then notes
        that the series are no longer recorded (see PartitionState.since).
        """
        if not self.stateful:
            if table is not None:
                self._stop_recording(table)
            return self._decide_alone(payment)
        if table is None:
            raise ValueError("this rule set has stateful rules: decide() needs an EntityTable")
        meta, now = self._clock(table, event_ms)
        holds, keys, entities = self._read(payment, table)
        fired: list[tuple[int, str]] | None = None
        notes: list[str] | None = None
        since = meta.since
        for check in self._checks:
            when, test = check.when, check.test
            if test is not None and not test(payment):
                continue
            if check.kind == _PLAIN:
                assert when is not None
                reason = check.reason or when.explain(payment)
            else:
                key = keys[check.group]
                if key is None:
                    continue
                started = since[check.since_id]
                if started > now - check.window:
                    if notes is None:
                        notes = []
                    notes.append(f"{check.rule.ref}: its {check.window_text} window is still filling"
                                 f" (history recorded since {_utc(started)})")
                entity = entities[check.group]
                series = entity.series.get(check.sid) if entity is not None else None
                if check.kind == _AGGREGATE:
                    found = _aggregate(check, series, payment, now, holds[check.series])
                else:
                    found = _sequence(check, series, payment, now)
                if found is None:
                    continue
                reason = f"{found} ({self._groups[check.group].describe(key)}{_extra(check, series, payment, now)})"
                if when is not None:
                    reason = f"{check.reason or when.explain(payment)}; {reason}"
            if fired is None:
                fired = []
            fired.append((check.index, reason))
        self._record(payment, now, table, meta, holds, keys, entities)
        if fired is None and notes is None:
            return self._nothing
        return self._decision(tuple(fired or ()), tuple(notes or ()))

    def remember(self, payment: Payment, event_ms: int, table: EntityTable) -> None:
        """Record a payment in the table without deciding it (rebuilding a partition's state)."""
        if not self.stateful:
            self._stop_recording(table)
            return
        meta, now = self._clock(table, event_ms)
        holds, keys, entities = self._read(payment, table)
        self._record(payment, now, table, meta, holds, keys, entities)

    def _read(self, payment: Payment, table: EntityTable) -> tuple[list[bool], list[bytes | None], list[KeyState | None]]:
        """Which series the payment counts in, its key per group, and those keys' entities in the table."""
        holds = [plan.test is None or plan.test(payment) for plan in self._plans]
        keys = [group.key(payment) for group in self._groups]
        entities: list[KeyState | None] = []
        for key in keys:
            entity = table.get(key) if key is not None else None
            entities.append(entity if isinstance(entity, KeyState) else None)
        return holds, keys, entities

    def _decide_alone(self, payment: Payment) -> Decision:
        fired: list[tuple[int, str]] | None = None
        for check in self._checks:
            test = check.test
            assert test is not None and check.when is not None
            if not test(payment):
                continue
            if fired is None:
                fired = []
            fired.append((check.index, check.reason or check.when.explain(payment)))
        if fired is None:
            return self._nothing
        return self._decision(tuple(fired), ())

    def _decision(self, fired: tuple[tuple[int, str], ...], notes: tuple[str, ...]) -> Decision:
        """The decision of the checks that fired (index, reason), with ``notes``: one object per distinct decision.

        Most decisions repeat (``bitcoin@1: PAYMENT_TYPE == BITCOIN``); the same
        object is returned for each, and its JSON is made once.
        """
        key = (fired, notes)
        decision = self._decisions.get(key)
        if decision is None:
            score = 0.0
            rules: list[FiredRule] = []
            for index, reason in fired:
                rule = self._checks[index].rule
                rules.append(FiredRule(rule.id, rule.version, rule.mode, rule.weight, reason))
                if rule.mode == "enabled":
                    score += rule.weight
            decision = Decision(score, self._threshold, tuple(rules), notes, self._review_threshold)
            if len(self._decisions) >= DECISIONS_KEPT:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _clock(self, table: EntityTable, event_ms: int) -> tuple[PartitionState, int]:
        """The partition's state and the time the payment counts at (clamped by ALLOWED_LATENESS_MS)."""
        meta = table.get(META_KEY)
        if not isinstance(meta, PartitionState):
            meta = PartitionState()
        watermark = meta.watermark
        changed = False
        if watermark is None or event_ms > watermark:
            now = meta.watermark = event_ms
            changed = True
        else:
            now = max(event_ms, watermark - ALLOWED_LATENESS_MS)
        if meta.signature != self._signature:
            old = meta.since
            meta.since = {since_id: old.get(since_id, now) for since_id in self._since_ids}
            meta.signature = self._signature
            changed = True
        if changed:
            table.put(META_KEY, meta)
        return meta, now

    def _stop_recording(self, table: EntityTable) -> None:
        meta = table.get(META_KEY)
        if isinstance(meta, PartitionState) and meta.signature:
            meta.signature, meta.since = "", {}
            table.put(META_KEY, meta)

    def _record(self, payment: Payment, now: int, table: EntityTable, meta: PartitionState, holds: list[bool],
                keys: list[bytes | None], entities: list[KeyState | None]) -> None:
        assert meta.watermark is not None
        horizon = meta.watermark - ALLOWED_LATENESS_MS
        for group, key, entity in zip(self._groups, keys, entities, strict=True):
            if key is None:
                continue
            # prune first: a distinct series whose sketches all expired counts exactly again
            touched = entity is not None and entity.prune(horizon)
            for plan in group.series:
                if not holds[plan.index]:
                    continue
                kind = plan.kind
                value: Any = None
                if kind == "v" or kind == "d":
                    assert plan.attr is not None
                    value = getattr(payment, plan.attr)
                    if value is None:
                        continue
                if entity is None:
                    entity = KeyState()
                series = entity.series.get(plan.sid)
                if series is None:
                    series = entity.series[plan.sid] = new_series(plan.sid)
                if kind == "n":
                    cast(Counts, series).add(now)
                elif kind == "v":
                    cast(Values, series).add_value(now, float(value))
                elif kind == "d":
                    cast(Distinct, series).add(now, value if value.__class__ is str else str(value))
                else:
                    assert plan.where is not None
                    cast(Firsts, series).add(now, plan.where.explain(payment))
                touched = True
            if touched:
                assert entity is not None
                table.put(key, entity)

    @property
    def series_ids(self) -> tuple[str, ...]:
        """``GROUP/series`` for every series the engine records (as PartitionState.since names them)."""
        return self._since_ids


def _aggregate(check: _Check, series: Series | None, payment: Payment, now: int, current: bool) -> str | None:
    """``label=observed in window op value`` if the aggregate holds, else None."""
    fn = check.fn
    width = check.width
    start = (now - check.window) // width
    observed: float
    if fn == _DISTINCT:
        raw = getattr(payment, check.attr) if current and check.attr else None
        value = None if raw is None else raw if raw.__class__ is str else str(raw)
        observed = series.count(start, value) if isinstance(series, Distinct) else int(value is not None)
        if observed == 0:
            return None
    elif fn in (_COUNT, _AGE):
        counts = series if isinstance(series, Counts) else None
        i = j = 0
        if counts is not None:
            i, j = counts.span(start, now // width)
        if fn == _COUNT:
            observed = (sum(counts.cnt[i:j]) if counts is not None and i < j else 0) + current
        else:
            first = counts.first[i] if counts is not None and i < j else None
            if first is None:
                if not current:
                    return None
                observed = 0
            else:
                observed = max(0, now - (min(first, now) if current else first)) / 1000
    else:
        values = series if isinstance(series, Values) else None
        i = j = 0
        if values is not None:
            i, j = values.span(start, now // width)
        raw = getattr(payment, check.attr) if current and check.attr else None
        if fn == _ZSCORE:
            if raw is None or values is None or i == j:
                return None
            n = sum(values.cnt[i:j])
            if n < check.min_count:
                return None
            observed = _zscore(float(raw), n, sum(values.sum[i:j]), sum(values.sq[i:j]))
        else:
            n = (sum(values.cnt[i:j]) if values is not None and i < j else 0) + (raw is not None)
            if n == 0:
                return None
            if fn in (_SUM, _AVG):
                total = (sum(values.sum[i:j]) if values is not None and i < j else 0.0) + (raw or 0)
                observed = total if fn == _SUM else total / n
            else:
                found: list[float] = [] if values is None else values.lo[i:j] if fn == _MIN else values.hi[i:j]
                if raw is not None:
                    found.append(raw)
                observed = min(found) if fn == _MIN else max(found)
    if not check.compare(observed, check.value):
        return None
    return f"{check.label}={_show(observed)} in {check.window_text} {check.op} {_show(check.value)}"


def _moments(n: int, total: float, squares: float) -> tuple[float, float]:
    """Mean and population standard deviation from the count, sum and sum of squares (0 when rounding leaves noise)."""
    mean = total / n
    variance = squares / n - mean * mean
    sd = math.sqrt(variance) if variance > 0 else 0.0
    if sd <= 1e-9 * max(1.0, abs(mean)):
        sd = 0.0
    return mean, sd


def _zscore(value: float, n: int, total: float, squares: float) -> float:
    """(value - mean) / sd of the earlier values; with a standard deviation of 0: 0 for the mean, else +-inf."""
    mean, sd = _moments(n, total, squares)
    if sd == 0.0:
        if abs(value - mean) <= 1e-9 * max(1.0, abs(mean)):
            return 0.0
        return math.copysign(math.inf, value - mean)
    return (value - mean) / sd


def _extra(check: _Check, series: Series | None, payment: Payment, now: int) -> str:
    """What a fired rule's reason shows after the key: zscore's statistics, a sequence's gap."""
    if check.kind == _SEQUENCE:
        assert isinstance(series, Firsts)
        at = series.times[series.latest(now, check.window)]
        return f", {_show((now - at) / 1000)}s apart"
    if check.fn == _ZSCORE:
        assert isinstance(series, Values) and check.attr is not None
        width = check.width
        i, j = series.span((now - check.window) // width, now // width)
        n = sum(series.cnt[i:j])
        mean, sd = _moments(n, sum(series.sum[i:j]), sum(series.sq[i:j]))
        field = check.label[len("zscore("):-1]
        return f"; {field}={_show(getattr(payment, check.attr))}, mean={_show(mean)}, sd={_show(sd)}, n={n}"
    return ""


def _sequence(check: _Check, series: Series | None, payment: Payment, now: int) -> str | None:
    """``first then then within window`` if a payment matching first precedes this one matching then, else None."""
    then = check.then
    assert then is not None
    assert check.then_test is not None
    if not isinstance(series, Firsts) or not check.then_test(payment):
        return None
    i = series.latest(now, check.window)
    if i < 0:
        return None
    return f"{series.texts[i]} then {then.explain(payment)} within {check.window_text}"
