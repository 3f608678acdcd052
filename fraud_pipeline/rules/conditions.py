"""Field conditions on one payment: comparisons combined with all / any / not.

A condition is written as data::

    {"field": "AMOUNT", "op": ">=", "value": 500}
    {"field": "TO", "op": "in_list", "value": "mule-payees"}
    {"all": [cond, ...]}   {"any": [cond, ...]}   {"not": cond}

``in_list`` holds while the payment's field value is a live entry of the
named list (fraud_pipeline.rules.lists): lists change while detectors run,
so a rule reading one decides with the entries of the moment.

Fields are the payment's wire names (PAYMENT_TYPE, AMOUNT, TO, ...). A
condition on a field the payment lacks (ACCOUNT in the original tutorial's
messages) does not hold, whatever its operator.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Protocol

from ..errors import RuleError
from ..payment import Payment
from .fields import ATTRIBUTES, FIELDS, NUMBER_FIELDS, TEXT_FIELDS, attribute_name, check_field, field_value, is_number
from .lists import LISTS, ListBook, check_name

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
OPERATORS = (*_COMPARISONS, "in", "in_list")
ORDERING = ("<", "<=", ">", ">=")
_ATTRIBUTES = ATTRIBUTES


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Condition(Protocol):
    def holds(self, payment: Payment) -> bool:
        """Whether the condition is true of the payment."""

    def explain(self, payment: Payment) -> str:
        """Why it holds, with the observed values, e.g. ``AMOUNT=742 >= 500``."""

    def describe(self) -> str:
        """The condition as text, e.g. ``AMOUNT >= 500``."""


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Any

    def holds(self, payment: Payment) -> bool:
        observed = getattr(payment, _ATTRIBUTES[self.field])
        if observed is None:
            return False
        if self.op == "in":
            return bool(observed in self.value)
        return _COMPARISONS[self.op](observed, self.value)

    def explain(self, payment: Payment) -> str:
        if self.op in ORDERING:
            return f"{self.field}={_show(field_value(payment, self.field))} {self.op} {_show(self.value)}"
        if self.op == "in":
            return f"{self.field}={_show(field_value(payment, self.field))} in {_show(self.value)}"
        return self.describe()

    def describe(self) -> str:
        return f"{self.field} {self.op} {_show(self.value)}"


@dataclass(frozen=True)
class InList:
    """The field's value is a live entry of the list ``name`` (of ``book``: the process's lists unless given)."""

    field: str
    name: str
    book: ListBook = dc_field(default=LISTS, compare=False, repr=False)

    def holds(self, payment: Payment) -> bool:
        return self.book.contains(self.name, getattr(payment, _ATTRIBUTES[self.field]))

    def explain(self, payment: Payment) -> str:
        return f"{self.field}={_show(field_value(payment, self.field))} in list {self.name}"

    def describe(self) -> str:
        return f"{self.field} in list {self.name}"


@dataclass(frozen=True)
class All:
    parts: tuple[Condition, ...]

    def holds(self, payment: Payment) -> bool:
        return all(part.holds(payment) for part in self.parts)

    def explain(self, payment: Payment) -> str:
        return " and ".join(_group(part.explain(payment), part) for part in self.parts)

    def describe(self) -> str:
        return " and ".join(_group(part.describe(), part) for part in self.parts)


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]

    def holds(self, payment: Payment) -> bool:
        return any(part.holds(payment) for part in self.parts)

    def explain(self, payment: Payment) -> str:
        return " or ".join(_group(part.explain(payment), part) for part in self.parts if part.holds(payment))

    def describe(self) -> str:
        return " or ".join(_group(part.describe(), part) for part in self.parts)


@dataclass(frozen=True)
class Not:
    part: Condition

    def holds(self, payment: Payment) -> bool:
        return not self.part.holds(payment)

    def explain(self, payment: Payment) -> str:
        return self.describe()

    def describe(self) -> str:
        return f"not ({self.part.describe()})"


__all__ = [
    "FIELDS", "NUMBER_FIELDS", "OPERATORS", "ORDERING", "TEXT_FIELDS", "All", "AnyOf", "Compare", "Condition", "InList",
    "Not", "attribute_name", "check_field", "compile_condition", "constant_explanation", "field_value", "is_number",
    "parse_condition",
]


def _group(text: str, part: Condition) -> str:
    return f"({text})" if isinstance(part, All | AnyOf) and len(part.parts) > 1 else text


def compile_condition(condition: Condition) -> Callable[[Payment], bool]:
    """A plain function equal to ``condition.holds``: one expression, not a walk of the tree per payment.

    ``{"all": [{"field": "TO", "op": "==", "value": "stranger"}, {"field": "AMOUNT", "op": ">=", "value": 500}]}``
    becomes ``(_v := p.to) is not None and _v == _c0 and (_v := p.amount) is not None and _v >= _c1``.
    The code holds only attribute names of the payment and the six comparison
    operators, both from fixed lists; the rule's values are bound by name.
    Conditions of another kind are called as they are.
    """
    constants: dict[str, Any] = {}

    def bind(value: Any) -> str:
        name = f"_c{len(constants)}"
        constants[name] = value
        return name

    def expression(part: Condition) -> str:
        if isinstance(part, Compare) and part.field in _ATTRIBUTES and (part.op in _COMPARISONS or part.op == "in"):
            # `in` reads a set: the values are text or finite numbers, so set membership is tuple membership
            test = f"_v in {bind(frozenset(part.value))}" if part.op == "in" else f"_v {part.op} {bind(part.value)}"
            return f"((_v := p.{_ATTRIBUTES[part.field]}) is not None and {test})"
        if isinstance(part, All | AnyOf):
            joiner = " and " if isinstance(part, All) else " or "
            return "(" + joiner.join(expression(inner) for inner in part.parts) + ")"
        if isinstance(part, Not):
            return f"(not {expression(part.part)})"
        return f"{bind(part.holds)}(p)"

    source = f"def holds(p):\n    return bool({expression(condition)})\n"
    exec(source, constants)
    holds: Callable[[Payment], bool] = constants["holds"]
    holds.__doc__ = condition.describe()
    return holds


def constant_explanation(condition: Condition) -> str | None:
    """``condition.explain``'s text when it is the same for every payment it holds for (``TO == stranger``), else None."""
    if isinstance(condition, Compare):
        return None if condition.op in ORDERING or condition.op == "in" else condition.describe()
    if isinstance(condition, Not):
        return condition.describe()
    if isinstance(condition, All):
        parts = [constant_explanation(part) for part in condition.parts]
        if any(text is None for text in parts):
            return None
        return " and ".join(_group(text, part) for text, part in zip(parts, condition.parts, strict=True) if text is not None)
    return None


def parse_condition(data: Any, path: str) -> Condition:
    """A condition from its data form; RuleError names the path of the part at fault."""
    if not isinstance(data, Mapping):
        raise RuleError(path, f"must be an object such as {{\"field\": ..., \"op\": ..., \"value\": ...}}, got {data!r}")
    for combinator in ("all", "any"):
        if combinator in data:
            _no_other_keys(data, {combinator}, path)
            parts = data[combinator]
            if not isinstance(parts, list) or not parts:
                raise RuleError(f"{path}.{combinator}", "must be a non-empty list of conditions")
            parsed = tuple(parse_condition(part, f"{path}.{combinator}[{i}]") for i, part in enumerate(parts))
            return All(parsed) if combinator == "all" else AnyOf(parsed)
    if "not" in data:
        _no_other_keys(data, {"not"}, path)
        return Not(parse_condition(data["not"], f"{path}.not"))
    _no_other_keys(data, {"field", "op", "value"}, path)
    for key in ("field", "op", "value"):
        if key not in data:
            raise RuleError(path, f"missing {key!r} (a condition is field/op/value, or all/any/not)")
    field = check_field(data["field"], f"{path}.field")
    op = data["op"]
    if op not in OPERATORS:
        raise RuleError(f"{path}.op", f"must be one of {' '.join(OPERATORS)}, got {op!r}")
    value = data["value"]
    if op == "in_list":
        return InList(field, check_name(value, f"{path}.value"))
    if op == "in":
        if not isinstance(value, list) or not value:
            raise RuleError(f"{path}.value", f"'in' needs a non-empty list, got {value!r}")
        for i, item in enumerate(value):
            _check_value(field, item, f"{path}.value[{i}]")
        return Compare(field, op, tuple(value))
    if op in ORDERING and field not in NUMBER_FIELDS:
        raise RuleError(f"{path}.op", f"{op!r} compares numbers; {field} is text")
    _check_value(field, value, f"{path}.value")
    return Compare(field, op, value)


def _check_value(field: str, value: Any, path: str) -> None:
    if field in NUMBER_FIELDS and not is_number(value):
        raise RuleError(path, f"{field} is a number, got {value!r}")
    if field in TEXT_FIELDS and not isinstance(value, str):
        raise RuleError(path, f"{field} is text, got {value!r}")


def _no_other_keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise RuleError(path, f"unexpected key(s) {', '.join(map(repr, extra))} next to {', '.join(sorted(allowed))}")
