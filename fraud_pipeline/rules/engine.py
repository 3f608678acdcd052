"""The rule engine: a payment and its account's history in, an explained decision out.

Pure Python: no Kafka, no clock. The caller gives each payment's event time
and the WindowState of its partition; the engine reads the windows, decides,
then records the payment in them.

Score = the sum of the weights of the enabled rules that fire; the payment
is fraud when the score reaches the rule set's threshold. Shadow rules are
evaluated and listed in the decision, and never change the score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from ..payment import Payment
from .conditions import field_value
from .definitions import Aggregate, Rule, RuleSet, Sequence
from .windows import WindowState

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
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
        shadow = " [shadow]" if self.mode == "shadow" else ""
        return f"{self.id}@{self.version}{shadow}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "mode": self.mode, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    score: float
    threshold: float
    fired: tuple[FiredRule, ...]

    @property
    def fraud(self) -> bool:
        # weights are floats: 0.7 + 0.1 must reach a threshold of 0.8
        return self.score >= self.threshold - 1e-9

    def enabled(self) -> tuple[FiredRule, ...]:
        return tuple(f for f in self.fired if f.mode == "enabled")

    def to_dict(self) -> dict[str, Any]:
        return {
            "fraud": self.fraud, "score": self.score, "threshold": self.threshold,
            "rules": [fired.to_dict() for fired in self.fired],
        }

    def to_json(self) -> bytes:
        """The decision as compact JSON (cached: most decisions repeat)."""
        return _decision_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> Decision | None:
        """A decision read back from a routed record's DECISION field; None if absent or unreadable."""
        try:
            fired = tuple(
                FiredRule(str(r["id"]), int(r["version"]), str(r["mode"]), float(r["weight"]), str(r["reason"]))
                for r in data["rules"]
            )
            return cls(float(data["score"]), float(data["threshold"]), fired)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


@lru_cache(maxsize=4096)
def _decision_json(decision: Decision) -> bytes:
    return orjson.dumps(decision.to_dict())


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _seconds(window_s: float) -> str:
    return f"{_show(window_s)}s"


class Engine:
    """Decides payments with one rule set; swap the engine to change the rules, keep the states."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._rules = ruleset.active
        self._group_fields = tuple(sorted(ruleset.group_fields))
        self._nothing = Decision(0.0, ruleset.threshold, ())

    def new_state(self) -> WindowState:
        """Empty windows for one partition, sized for this rule set."""
        return WindowState(self._group_fields, self.ruleset.retention_ms)

    def decide(self, payment: Payment, event_ms: int, state: WindowState | None = None) -> Decision:
        """Decide one payment at its event time, then record it in ``state``.

        ``state`` may be None only for a rule set without stateful rules.
        """
        if state is None and self._group_fields:
            raise ValueError("this rule set has stateful rules: decide() needs a WindowState")
        now = state.event_time(event_ms) if state is not None else event_ms
        fired: list[FiredRule] = []
        score = 0.0
        for rule in self._rules:
            reason = self._fires(rule, payment, now, state)
            if reason is None:
                continue
            fired.append(FiredRule(rule.id, rule.version, rule.mode, rule.weight, reason))
            if rule.mode == "enabled":
                score += rule.weight
        if state is not None:
            self._record(payment, now, state)
        if not fired:
            return self._nothing
        return Decision(score, self.ruleset.threshold, tuple(fired))

    def remember(self, payment: Payment, event_ms: int, state: WindowState) -> None:
        """Record a payment in the windows without deciding it (rebuilding a partition's state)."""
        self._record(payment, state.event_time(event_ms), state)

    def _record(self, payment: Payment, at_ms: int, state: WindowState) -> None:
        # Every field the state tracks, not only this rule set's: a state kept
        # across a rule change stays complete for the rules that read it later.
        if state.group_fields:
            keys = [(field, key) for field in state.group_fields if (key := field_value(payment, field)) is not None]
            state.add(payment, keys, at_ms)

    @property
    def stateful(self) -> bool:
        """Whether some active rule reads the history of a key."""
        return bool(self._group_fields)

    def _fires(self, rule: Rule, payment: Payment, now: int, state: WindowState | None) -> str | None:
        """The reason the rule fires for this payment, or None."""
        if rule.when is not None and not rule.when.holds(payment):
            return None
        parts = [rule.when.explain(payment)] if rule.when is not None else []
        if rule.aggregate is not None or rule.sequence is not None:
            assert state is not None
            if rule.aggregate is not None:
                found = _aggregate(rule.aggregate, payment, now, state)
            else:
                assert rule.sequence is not None
                found = _sequence(rule.sequence, payment, now, state)
            if found is None:
                return None
            parts.append(found)
        return "; ".join(parts)


def _aggregate(aggregate: Aggregate, payment: Payment, now: int, state: WindowState) -> str | None:
    key = field_value(payment, aggregate.group_by)
    if key is None:
        return None
    observed = _observe(aggregate, key, payment, now, state)
    if observed is None:
        return None
    label = "count" if aggregate.function == "count" else f"{aggregate.function}({aggregate.field})"
    if not _COMPARE[aggregate.op](observed, aggregate.value):
        return None
    return (
        f"{label}={_show(observed)} in {_seconds(aggregate.window_s)} {aggregate.op} {_show(aggregate.value)}"
        f" ({aggregate.group_by}={key})"
    )


def _observe(aggregate: Aggregate, key: str, payment: Payment, now: int, state: WindowState) -> float | None:
    """The aggregate's value over the key's window, the current payment included; None if there is none."""
    where = aggregate.where
    window_ms = int(aggregate.window_s * 1000)
    if aggregate.function == "count" and where is None:  # the common velocity rule: found by bisection
        return state.count(aggregate.group_by, key, now, window_ms) + 1
    counted = [p for _, p in state.events(aggregate.group_by, key, now, window_ms) if where is None or where.holds(p)]
    if where is None or where.holds(payment):
        counted.append(payment)
    if aggregate.function == "count":
        return len(counted)
    assert aggregate.field is not None
    values = [v for p in counted if (v := field_value(p, aggregate.field)) is not None]
    if not values:
        return None
    if aggregate.function == "sum":
        return sum(values)
    if aggregate.function == "avg":
        return sum(values) / len(values)
    return min(values) if aggregate.function == "min" else max(values)


def _sequence(sequence: Sequence, payment: Payment, now: int, state: WindowState) -> str | None:
    key = field_value(payment, sequence.group_by)
    if key is None or not sequence.then.holds(payment):
        return None
    within_ms = int(sequence.within_s * 1000)
    earlier = [(t, p) for t, p in state.events(sequence.group_by, key, now, within_ms) if sequence.first.holds(p)]
    if not earlier:
        return None
    at, first = earlier[-1]
    return (
        f"{sequence.first.explain(first)} then {sequence.then.explain(payment)} within {_seconds(sequence.within_s)}"
        f" ({sequence.group_by}={key}, {_show((now - at) / 1000)}s apart)"
    )
