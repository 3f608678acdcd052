"""Rules and rule sets as data: their types, validation, and the files they come from.

A rule set document (JSON or YAML)::

    threshold: 1            # declined when the enabled rules that fire weigh this much
    review_threshold: 0.5   # optional: held for review from this score up to the threshold
    rules:
      - id: large-to-stranger
        version: 1
        weight: 1
        mode: enabled        # enabled | shadow (decided, never routes) | disabled
        description: large payment to someone the sender does not know
        when: {all: [{field: TO, op: "==", value: stranger}, {field: AMOUNT, op: ">=", value: 500}]}
      - id: burst
        aggregate: {function: count, group_by: ACCOUNT, window_s: 60, op: ">", value: 5}
      - id: new-payee-then-large
        when: {field: AMOUNT, op: ">=", value: 500}
        aggregate: {function: age, group_by: [ACCOUNT, TO], window_s: 2592000, op: "<", value: 3600}
      - id: small-then-large
        sequence: {group_by: ACCOUNT, within_s: 60,
                   first: {field: AMOUNT, op: "<", value: 5}, then: {field: AMOUNT, op: ">=", value: 500}}

A rule fires when its ``when`` holds for the payment (no ``when``: always)
and, if it has one, its ``aggregate`` or ``sequence`` holds over the
payments of the same key. Unknown keys are refused, so a typo is an error,
not a rule that never fires.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .conditions import Condition, RuleError, check_field, is_number, parse_condition

MODES = ("enabled", "shadow", "disabled")
FUNCTIONS = ("count", "sum", "avg", "min", "max", "distinct", "age", "zscore")
NUMERIC_FUNCTIONS = ("sum", "avg", "min", "max", "zscore")
"""The functions of a numeric ``field`` (required)."""
GROUP_FIELDS = ("ACCOUNT", "TO", "PAYMENT_TYPE", "CARD", "DEVICE", "IP", "MERCHANT")
"""The fields payments can be grouped by, in the order a compound key names them."""
MAX_GROUP_FIELDS = 3
MIN_WINDOW_S = 1
MAX_WINDOW_S = 30 * 86_400
"""The longest window a rule may ask for (30 days). State is kept in bounded
time buckets (fraud_pipeline.rules.aggregates), so a long window costs at most
~60 buckets per key, whatever the rate."""
DEFAULT_MIN_COUNT = 5
"""zscore: how many earlier payments the key needs in the window before the rule can fire."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_COMPARE_OPS = ("<", "<=", ">", ">=", "==", "!=")


def group_label(fields: tuple[str, ...]) -> str:
    """How a group is named in listings: ``ACCOUNT`` or ``ACCOUNT,TO``."""
    return ",".join(fields)


@dataclass(frozen=True)
class Aggregate:
    """``function`` of ``field`` over the key's payments in the last ``window_s``, compared with ``value``."""

    function: str
    field: str | None
    group_by: tuple[str, ...]
    """1-3 fields in GROUP_FIELDS order: a payment lacking any of them is not grouped."""
    window_s: float
    op: str
    value: float
    where: Condition | None = None
    """Only payments for which this holds are aggregated (the current one included)."""
    min_count: int = DEFAULT_MIN_COUNT
    """zscore only: the earlier payments needed in the window."""


@dataclass(frozen=True)
class Sequence:
    """A payment matching ``first``, then (the current one) matching ``then``, from one key within ``within_s``."""

    group_by: tuple[str, ...]
    within_s: float
    first: Condition
    then: Condition


@dataclass(frozen=True)
class Rule:
    id: str
    version: int = 1
    weight: float = 1.0
    mode: str = "enabled"
    description: str = ""
    when: Condition | None = None
    aggregate: Aggregate | None = None
    sequence: Sequence | None = None
    source: Mapping[str, Any] | None = None
    """The data the rule was read from, as published (for listing and republishing)."""

    @property
    def ref(self) -> str:
        """``id@version``, how decisions name the rule."""
        return f"{self.id}@{self.version}"

    @property
    def group_by(self) -> tuple[str, ...] | None:
        """The fields the rule groups payments by (None for a rule of the payment alone)."""
        stateful = self.aggregate or self.sequence
        return stateful.group_by if stateful else None

    @property
    def window_ms(self) -> int:
        """How much of a key's history the rule reads (0 for a rule of the payment alone)."""
        if self.aggregate:
            return round(self.aggregate.window_s * 1000)
        if self.sequence:
            return round(self.sequence.within_s * 1000)
        return 0


@dataclass(frozen=True)
class RuleSet:
    threshold: float
    rules: tuple[Rule, ...]
    review_threshold: float | None = None
    """From this score up to the threshold a payment is held for review; None: no review outcome."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise RuleError("rules", f"two rules have the id {rule.id!r}")
            seen.add(rule.id)

    def get(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def with_rule(self, rule: Rule) -> RuleSet:
        """This set with ``rule`` added, or replacing the rule of the same id in its place."""
        if self.get(rule.id) is None:
            return self.with_rules((*self.rules, rule))
        return self.with_rules(tuple(rule if r.id == rule.id else r for r in self.rules))

    def without(self, rule_id: str) -> RuleSet:
        return self.with_rules(tuple(r for r in self.rules if r.id != rule_id))

    def with_rules(self, rules: tuple[Rule, ...]) -> RuleSet:
        """These rules with this set's thresholds."""
        return RuleSet(self.threshold, rules, self.review_threshold)

    @property
    def active(self) -> tuple[Rule, ...]:
        """The rules that are evaluated: enabled and shadow ones."""
        return tuple(r for r in self.rules if r.mode != "disabled")

    @property
    def retention_ms(self) -> int:
        """The longest history any active rule reads."""
        return max((r.window_ms for r in self.active), default=0)

    @property
    def group_keys(self) -> tuple[tuple[str, ...], ...]:
        """The field tuples active stateful rules group payments by, sorted."""
        return tuple(sorted({r.group_by for r in self.active if r.group_by}))

    @property
    def group_fields(self) -> frozenset[str]:
        """Every field active stateful rules group payments by (alone or in a compound key)."""
        return frozenset(field for key in self.group_keys for field in key)

    @property
    def version(self) -> str:
        """A short, stable name of the set's content (thresholds and every rule as published), e.g. ``3f2a9c1b``."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"threshold": self.threshold}
        if self.review_threshold is not None:
            data["review_threshold"] = self.review_threshold
        return data | {"rules": [dict(r.source or {"id": r.id}) for r in self.rules]}


def _number(data: Mapping[str, Any], key: str, path: str, default: float | None = None, *, positive: bool = False) -> float:
    if key not in data:
        if default is None:
            raise RuleError(f"{path}{key}", "is required")
        return default
    value = data[key]
    if not is_number(value) or (positive and value <= 0):
        raise RuleError(f"{path}{key}", f"must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _window(data: Mapping[str, Any], key: str, path: str) -> float:
    seconds = _number(data, key, path, positive=True)
    if seconds > MAX_WINDOW_S:
        raise RuleError(f"{path}{key}", f"must be at most {MAX_WINDOW_S} s (30 days), got {seconds:g}")
    if seconds < MIN_WINDOW_S:
        raise RuleError(f"{path}{key}", f"must be at least {MIN_WINDOW_S} s, got {seconds:g}")
    return seconds


def _keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise RuleError(path.rstrip(".") or "rule", f"unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def _group_by(data: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """A field of GROUP_FIELDS or a list of 1-3 distinct ones, as a tuple in GROUP_FIELDS order."""
    value = data.get("group_by")
    fields = value if isinstance(value, list) else [value]
    problem = None
    if not 1 <= len(fields) <= MAX_GROUP_FIELDS:
        problem = f"a list of 1-{MAX_GROUP_FIELDS} fields"
    elif any(not isinstance(f, str) or f not in GROUP_FIELDS for f in fields):
        problem = "fields"
    elif len(set(fields)) != len(fields):
        problem = "distinct fields"
    if problem:
        raise RuleError(
            f"{path}group_by",
            f"must be one of {', '.join(GROUP_FIELDS)}, or a list of 1-{MAX_GROUP_FIELDS} of them, got {value!r}",
        )
    return tuple(sorted(fields, key=GROUP_FIELDS.index))


def _parse_aggregate(data: Any, path: str) -> Aggregate:
    if not isinstance(data, Mapping):
        raise RuleError(path, "must be an object")
    _keys(data, {"function", "field", "group_by", "window_s", "op", "value", "where", "min_count"}, path)
    prefix = f"{path}."
    function = data.get("function")
    if function not in FUNCTIONS:
        raise RuleError(f"{prefix}function", f"must be one of {', '.join(FUNCTIONS)}, got {function!r}")
    field = None
    if function == "age" and "field" in data:
        raise RuleError(f"{prefix}field", "age takes no field (it is the time since the key's first payment)")
    if function == "distinct":
        field = check_field(data.get("field"), f"{prefix}field")
    elif function in NUMERIC_FUNCTIONS or (function == "count" and "field" in data):
        field = check_field(data.get("field"), f"{prefix}field", numeric=True)
    min_count = DEFAULT_MIN_COUNT
    if "min_count" in data:
        min_count = data["min_count"]
        if function != "zscore":
            raise RuleError(f"{prefix}min_count", "is for zscore only")
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise RuleError(f"{prefix}min_count", f"must be a whole number >= 1, got {min_count!r}")
    op = data.get("op")
    if op not in _COMPARE_OPS:
        raise RuleError(f"{prefix}op", f"must be one of {' '.join(_COMPARE_OPS)}, got {op!r}")
    where = parse_condition(data["where"], f"{prefix}where") if "where" in data else None
    return Aggregate(
        function=function, field=field, group_by=_group_by(data, prefix), window_s=_window(data, "window_s", prefix),
        op=op, value=_number(data, "value", prefix), where=where, min_count=min_count,
    )


def _parse_sequence(data: Any, path: str) -> Sequence:
    if not isinstance(data, Mapping):
        raise RuleError(path, "must be an object")
    _keys(data, {"group_by", "within_s", "first", "then"}, path)
    for key in ("first", "then"):
        if key not in data:
            raise RuleError(f"{path}.{key}", "is required")
    return Sequence(
        group_by=_group_by(data, f"{path}."), within_s=_window(data, "within_s", f"{path}."),
        first=parse_condition(data["first"], f"{path}.first"), then=parse_condition(data["then"], f"{path}.then"),
    )


def parse_rule(data: Any) -> Rule:
    """One rule from its data form; RuleError names the rule and the field at fault."""
    if not isinstance(data, Mapping):
        raise RuleError("", f"a rule must be an object, got {type(data).__name__}")
    rule_id = data.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RuleError("id", f"must be 1-64 letters, digits, '.', '_' or '-', got {rule_id!r}")
    try:
        _keys(data, {"id", "version", "weight", "mode", "description", "when", "aggregate", "sequence"}, "")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RuleError("version", f"must be a whole number >= 1, got {version!r}")
        mode = data.get("mode", "enabled")
        if mode not in MODES:
            raise RuleError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise RuleError("description", "must be text")
        when = parse_condition(data["when"], "when") if "when" in data else None
        aggregate = _parse_aggregate(data["aggregate"], "aggregate") if "aggregate" in data else None
        sequence = _parse_sequence(data["sequence"], "sequence") if "sequence" in data else None
        if aggregate and sequence:
            raise RuleError("", "a rule has an aggregate or a sequence, not both")
        if not (when or aggregate or sequence):
            raise RuleError("", "a rule needs 'when', 'aggregate' or 'sequence'")
        return Rule(
            id=rule_id, version=version, weight=_number(data, "weight", "", 1.0), mode=mode, description=description,
            when=when, aggregate=aggregate, sequence=sequence, source=dict(data),
        )
    except RuleError as exc:
        raise exc.in_rule(rule_id) from None


def parse_ruleset(data: Any) -> RuleSet:
    """A rule set from its data form (``{"threshold": ..., "rules": [...]}``)."""
    if not isinstance(data, Mapping):
        raise RuleError("", f"a rule set must be an object with 'rules', got {type(data).__name__}")
    _keys(data, {"threshold", "review_threshold", "rules"}, "rule set")
    threshold = _number(data, "threshold", "", 1.0, positive=True)
    review = None
    if "review_threshold" in data:
        review = _number(data, "review_threshold", "", positive=True)
        if review >= threshold:
            raise RuleError("review_threshold", f"must be below the threshold ({threshold:g}), got {review:g}")
    rules = data.get("rules")
    if not isinstance(rules, list):
        raise RuleError("rules", "must be a list of rules")
    return RuleSet(threshold, tuple(parse_rule(rule) for rule in rules), review)


def read_document(path: Path) -> Any:
    """The data of a JSON or YAML file (by its extension; YAML reads JSON too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RuleError("", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None


def load_ruleset(path: str | Path) -> RuleSet:
    """Read and validate a rule set file; RuleError says which rule and field are at fault."""
    path = Path(path)
    try:
        return parse_ruleset(read_document(path))
    except RuleError as exc:
        raise RuleError(exc.path, exc.message if exc.message.startswith(str(path)) else f"{exc.message} (in {path})", exc.rule_id) from None


ORIGINAL_RULE = parse_rule({
    "id": "bitcoin", "version": 1, "weight": 1, "mode": "enabled",
    "description": "the original tutorial's rule: a payment in BITCOIN is suspicious",
    "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"},
})
ORIGINAL = RuleSet(threshold=1.0, rules=(ORIGINAL_RULE,))
"""The default rule set: the original tutorial's routing, exactly."""

RULESETS_DIR = Path(__file__).with_name("sets")
"""Rule set files shipped with the package: ``recommended.yaml``."""
