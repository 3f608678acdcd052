"""Property: the detector's fast path equals the plain one.

Per payment the detector runs compiled conditions instead of walking the
condition trees, hands out one Decision object per distinct decision, builds
the routed record from parts cached per decision, and builds its records
with frozen.builder. Each is checked here against the plain code it stands
for, on random rules and payments.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any
from unittest.mock import MagicMock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_pipeline.clients import Producer, Record
from fraud_pipeline.clients.types import make_record
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.detector import Detector, decision_header
from fraud_pipeline.frozen import builder
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.payment import PAYMENT_TYPES, RECIPIENTS, Payment, encode, with_field
from fraud_pipeline.rules import Decision, Engine, FiredRule, RuleSet, parse_ruleset
from fraud_pipeline.rules.conditions import (
    NUMBER_FIELDS,
    TEXT_FIELDS,
    compile_condition,
    constant_explanation,
    parse_condition,
)
from fraud_pipeline.runtime import Summary
from fraud_pipeline.stage import LineBuffer, Output
from tests.unit.records import memory_states, record, sends

TEXTS = st.sampled_from([*PAYMENT_TYPES, *RECIPIENTS, "ACC00001", "mule-1", "dev-1", "", "<b>"])
NUMBERS = st.one_of(st.integers(-5, 1_000), st.floats(-5, 1_000, allow_nan=False), st.sampled_from([0, 5, 150, 500]))


@st.composite
def comparisons(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        field = draw(st.sampled_from(TEXT_FIELDS))
        op = draw(st.sampled_from(["==", "!=", "in"]))
        values = TEXTS
    else:
        field = draw(st.sampled_from(NUMBER_FIELDS))
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"]))
        values = NUMBERS
    value = draw(st.lists(values, min_size=1, max_size=4)) if op == "in" else draw(values)
    return {"field": field, "op": op, "value": value}


CONDITIONS = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"all": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"any": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=6,
)


@st.composite
def payments(draw: st.DrawFn) -> Payment:
    optional = st.one_of(st.none(), TEXTS)
    return Payment(
        date="01/22/2023", time="11:50:50", payment_type=draw(st.sampled_from(PAYMENT_TYPES)),
        amount=draw(st.sampled_from([0, 1, 4, 5, 149, 150, 151, 499, 500, 742])), to=draw(st.one_of(TEXTS, st.just("mule-2"))),
        payment_id=draw(optional), account=draw(optional),
        timestamp_ms=draw(st.one_of(st.none(), st.integers(0, 2_000))),
        card=draw(optional), device=draw(optional), ip=draw(optional), merchant=draw(optional),
    )


RULESETS = st.builds(
    lambda whens, modes, weights, threshold: parse_ruleset({
        "threshold": threshold,
        "rules": [
            {"id": f"r{n}", "version": n + 1, "mode": mode, "weight": weight, "when": when}
            for n, (when, mode, weight) in enumerate(zip(whens, modes, weights, strict=False))
        ],
    }),
    st.lists(CONDITIONS, min_size=1, max_size=4),
    st.lists(st.sampled_from(["enabled", "shadow", "disabled"]), min_size=4, max_size=4),
    st.lists(st.sampled_from([0.1, 0.5, 0.7, 1, 2]), min_size=4, max_size=4),
    st.sampled_from([0.8, 1, 2]),
)


def plain_decision(ruleset: RuleSet, payment: Payment) -> Decision:
    """What the engine decides, by walking each active rule's condition tree."""
    fired = tuple(
        FiredRule(rule.id, rule.version, rule.mode, rule.weight, rule.when.explain(payment))
        for rule in ruleset.active if rule.when is not None and rule.when.holds(payment)
    )
    return Decision(sum((f.weight for f in fired if f.mode == "enabled"), 0.0), ruleset.threshold, fired)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(CONDITIONS, payments())
def test_a_compiled_condition_holds_where_its_tree_holds(data: dict[str, Any], payment: Payment) -> None:
    condition = parse_condition(data, "when")
    holds = condition.holds(payment)
    assert compile_condition(condition)(payment) is holds
    constant = constant_explanation(condition)
    if constant is not None and holds:
        assert constant == condition.explain(payment)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(RULESETS, st.lists(payments(), min_size=1, max_size=8))
def test_the_engine_decides_as_the_rule_trees_do(ruleset: RuleSet, batch: list[Payment]) -> None:
    engine = Engine(ruleset)
    for payment in batch:
        decision = engine.decide(payment, 1_000)
        assert decision == plain_decision(ruleset, payment)
        assert decision.to_json() == orjson.dumps(plain_decision(ruleset, payment).to_dict())
        # one object per distinct decision: deciding the same payment again hands out the same one
        assert engine.decide(payment, 1_000) is decision


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(RULESETS, st.lists(payments(), min_size=1, max_size=12))
def test_routed_records_and_lines_are_the_plain_ones(ruleset: RuleSet, batch: list[Payment]) -> None:
    producer = MagicMock(spec_set=Producer)
    producer.partition_count.return_value = 2
    out = io.StringIO()
    lines = LineBuffer(Summary("t", "payments"), False, out)
    detector = Detector(Output(producer), Settings(ConnectionSettings(("localhost:9091",))), MagicMock(), lines,
                        LiveRules(ruleset, None, MagicMock()), memory_states())
    values = [encode(payment) for payment in batch]
    for offset, value in enumerate(values):
        detector.handle(record(value, offset=offset, partition=offset % 3, key=b"k"))
    detector.emit()

    printed = out.getvalue().splitlines()
    for payment, value, sent, line, offset in zip(batch, values, sends(producer), printed, range(len(batch)), strict=True):
        decision = plain_decision(ruleset, payment)
        topic = "fraud_payments" if decision.fraud else "legit_payments"
        assert sent.topic == topic and sent.partition == offset % 3 % 2 and sent.key == b"k"
        assert sent.value == with_field(value, "DECISION", decision.to_json())
        assert sent.headers == [decision_header(decision)]
        assert line == f"{topic} {decision.fraud} {payment.payment_type}"


@given(payments())
def test_a_built_payment_is_the_payment_its_constructor_makes(payment: Payment) -> None:
    values = [getattr(payment, f.name) for f in dataclasses.fields(Payment)]
    built = builder(Payment)(*values)
    assert type(built) is Payment and built == payment and hash(built) == hash(payment) and repr(built) == repr(payment)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.amount = 1  # type: ignore[misc]


def test_a_built_record_is_the_record_its_constructor_makes() -> None:
    values = ("payments", 2, 7, b"k", b"v", (("h", b"1"),), 1234)
    built = make_record(*values)
    assert type(built) is Record and built == Record(*values) and hash(built) == hash(Record(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.offset = 8  # type: ignore[misc]


def test_a_builder_takes_only_frozen_slotted_dataclasses() -> None:
    @dataclasses.dataclass(slots=True)
    class Writable:
        x: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    for cls in (Writable, NoSlots, dict):
        with pytest.raises(TypeError, match="not a frozen dataclass with slots"):
            builder(cls)
