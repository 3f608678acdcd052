"""The rule engine on its own: conditions, validation, windows, sequences, decisions, live changes.

(The aggregates' own properties, against brute force, are in test_aggregates.py.)
"""

from __future__ import annotations

import datetime
import io
import json
import random
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from fraud_pipeline.clients import Producer, TopicPartition
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.detector import Detector, decision_header
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.payment import MAX_CLOCK_SKEW_MS, Payment, encode, event_time, generate, with_field
from fraud_pipeline.processors import reasons_line
from fraud_pipeline.rules import (
    ALLOWED_LATENESS_MS,
    ORIGINAL,
    Decision,
    Engine,
    MemoryTable,
    RuleError,
    RuleSet,
    decode_entity,
    encode_entity,
    load_ruleset,
    parse_rule,
    parse_ruleset,
)
from fraud_pipeline.runtime import Summary
from fraud_pipeline.stage import DeadLetters, LineBuffer, Output
from fraud_pipeline.state import PartitionStates
from tests.unit.records import TOPIC, ChangelogLog, GroupConsumer, LogReader, record, sends

S = 1000  # ms


def pay(amount: int = 10, payment_type: str = "VISA", to: str = "mom", account: str | None = "A", ts: int = 0) -> Payment:
    return Payment("01/22/2023", "11:50:50", payment_type, amount, to, f"id-{ts}-{amount}", account, ts)


def rule(**fields: Any) -> dict[str, Any]:
    return {"id": "r", **fields}


def engine(*rules: dict[str, Any], threshold: float = 1) -> Engine:
    return Engine(parse_ruleset({"threshold": threshold, "rules": list(rules)}))


def fires(cond: dict[str, Any], payment: Payment) -> bool:
    return engine(rule(when=cond)).decide(payment, 0).fraud


# --- conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"field": "AMOUNT", "op": ">=", "value": 10}, True),
        ({"field": "AMOUNT", "op": ">", "value": 10}, False),
        ({"field": "AMOUNT", "op": "<", "value": 10.5}, True),
        ({"field": "AMOUNT", "op": "<=", "value": 9}, False),
        ({"field": "TO", "op": "==", "value": "mom"}, True),
        ({"field": "TO", "op": "!=", "value": "mom"}, False),
        ({"field": "PAYMENT_TYPE", "op": "in", "value": ["VISA", "BITCOIN"]}, True),
        ({"field": "PAYMENT_TYPE", "op": "in", "value": ["BITCOIN"]}, False),
        ({"all": [{"field": "TO", "op": "==", "value": "mom"}, {"field": "AMOUNT", "op": ">", "value": 5}]}, True),
        ({"all": [{"field": "TO", "op": "==", "value": "mom"}, {"field": "AMOUNT", "op": ">", "value": 50}]}, False),
        ({"any": [{"field": "TO", "op": "==", "value": "dad"}, {"field": "AMOUNT", "op": ">", "value": 5}]}, True),
        ({"any": [{"field": "TO", "op": "==", "value": "dad"}, {"field": "AMOUNT", "op": ">", "value": 50}]}, False),
        ({"not": {"field": "TO", "op": "==", "value": "dad"}}, True),
        ({"not": {"any": [{"field": "TO", "op": "==", "value": "mom"}]}}, False),
    ],
)
def test_conditions(cond: dict[str, Any], expected: bool) -> None:
    assert fires(cond, pay()) is expected


def test_a_condition_on_a_missing_field_does_not_hold_whatever_the_operator() -> None:
    original_message = pay(account=None)
    assert not fires({"field": "ACCOUNT", "op": "==", "value": "A"}, original_message)
    assert not fires({"field": "ACCOUNT", "op": "!=", "value": "A"}, original_message)


def test_explanations_show_observed_values() -> None:
    decision = engine(rule(when={"all": [{"field": "TO", "op": "==", "value": "mom"}, {"field": "AMOUNT", "op": ">=", "value": 5}]})
                      ).decide(pay(amount=742), 0)
    assert decision.fired[0].reason == "TO == mom and AMOUNT=742 >= 5"


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"when": {"field": "AMOUNT", "op": ">", "value": 1}}, "id: must be"),
        (rule(), "rule 'r': a rule needs 'when', 'aggregate' or 'sequence'"),
        (rule(when={"field": "AMOUNT", "op": "<", "value": "ten"}), "rule 'r': when.value: AMOUNT is a number"),
        (rule(when={"field": "AMOUNTS", "op": "<", "value": 1}), "rule 'r': when.field: must be one of"),
        (rule(when={"field": "TO", "op": "<", "value": "x"}), "rule 'r': when.op: '<' compares numbers; TO is text"),
        (rule(when={"field": "TO", "op": "~", "value": "x"}), "rule 'r': when.op: must be one of"),
        (rule(when={"field": "TO", "op": "in", "value": []}), "rule 'r': when.value: 'in' needs a non-empty list"),
        (rule(when={"all": [{"field": "TO", "op": "==", "value": 3}]}), "rule 'r': when.all[0].value: TO is text"),
        (rule(when={"all": []}), "rule 'r': when.all: must be a non-empty list"),
        (rule(when={"field": "TO", "op": "==", "value": "x"}, mode="on"), "rule 'r': mode: must be one of enabled, shadow, disabled"),
        (rule(when={"field": "TO", "op": "==", "value": "x"}, version=0), "rule 'r': version: must be a whole number >= 1"),
        (rule(when={"field": "TO", "op": "==", "value": "x"}, wieght=2), "rule 'r': rule: unknown key(s) 'wieght'"),
        (rule(aggregate={"function": "median", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 1}),
         "rule 'r': aggregate.function: must be one of count, sum, avg, min, max, distinct, age, zscore"),
        (rule(aggregate={"function": "sum", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 1}),
         "rule 'r': aggregate.field: must be one of AMOUNT, TIMESTAMP_MS"),
        (rule(aggregate={"function": "count", "group_by": "DATE", "window_s": 60, "op": ">", "value": 1}),
         "rule 'r': aggregate.group_by: must be one of ACCOUNT, TO, PAYMENT_TYPE, CARD, DEVICE, IP, MERCHANT, or a list of 1-3"),
        (rule(aggregate={"function": "count", "group_by": "ACCOUNT", "window_s": -5, "op": ">", "value": 1}),
         "rule 'r': aggregate.window_s: must be a positive number"),
        (rule(aggregate={"function": "count", "group_by": "ACCOUNT", "window_s": 10**7, "op": ">", "value": 1}),
         "rule 'r': aggregate.window_s: must be at most 2592000 s (30 days)"),
        (rule(aggregate={"function": "count", "group_by": "ACCOUNT", "window_s": 0.5, "op": ">", "value": 1}),
         "rule 'r': aggregate.window_s: must be at least 1 s"),
        (rule(aggregate={"function": "count", "group_by": "ACCOUNT", "window_s": float("nan"), "op": ">", "value": 1}),
         "rule 'r': aggregate.window_s: must be a positive number, got nan"),
        (rule(when={"field": "TO", "op": "==", "value": "x"}, weight=float("inf")), "rule 'r': weight: must be a number, got inf"),
        (rule(sequence={"group_by": "ACCOUNT", "within_s": 60, "first": {"field": "AMOUNT", "op": "<", "value": 5}}),
         "rule 'r': sequence.then: is required"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as error:
        parse_rule(data)
    assert str(error.value).startswith(message), str(error.value)


def test_duplicate_ids_and_bad_threshold_are_refused() -> None:
    good = {"id": "x", "when": {"field": "TO", "op": "==", "value": "x"}}
    with pytest.raises(RuleError, match="two rules have the id 'x'"):
        parse_ruleset({"rules": [good, good]})
    with pytest.raises(RuleError, match="threshold: must be a positive number"):
        parse_ruleset({"threshold": 0, "rules": [good]})


def test_rule_files_in_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "set.json").write_text(json.dumps({"threshold": 2, "rules": [rule(when={"field": "TO", "op": "==", "value": "x"})]}))
    (tmp_path / "set.yaml").write_text("rules:\n  - id: y\n    when: {field: AMOUNT, op: '>', value: 3}\n")
    assert load_ruleset(tmp_path / "set.json").threshold == 2
    assert [r.id for r in load_ruleset(tmp_path / "set.yaml").rules] == ["y"]
    (tmp_path / "bad.yaml").write_text("rules:\n  - id: y\n    when: {field: AMOUNT, op: '>', value: three}\n")
    with pytest.raises(RuleError, match=r"rule 'y': when.value: AMOUNT is a number, got 'three' \(in .*bad.yaml\)"):
        load_ruleset(tmp_path / "bad.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RuleError, match=r"broken\.json is not valid JSON"):
        load_ruleset(tmp_path / "broken.json")


# --- decisions ----------------------------------------------------------------------------------


def test_the_original_rule_set_routes_exactly_as_the_original() -> None:
    rng = random.Random(3)
    original = Engine(ORIGINAL)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for _ in range(500):
        p = generate(rng, now)
        assert original.decide(p, 0).fraud is (p.payment_type == "BITCOIN")  # the original's is_suspicious


def test_score_weights_threshold_shadow_and_disabled() -> None:
    big = {"field": "AMOUNT", "op": ">=", "value": 100}
    stranger = {"field": "TO", "op": "==", "value": "stranger"}
    e = Engine(parse_ruleset({"threshold": 1.5, "rules": [
        {"id": "big", "weight": 1, "when": big},
        {"id": "stranger", "weight": 0.5, "when": stranger},
        {"id": "watch", "mode": "shadow", "weight": 5, "when": big},
        {"id": "off", "mode": "disabled", "weight": 5, "when": big},
    ]}))
    only_big = e.decide(pay(amount=150), 0)
    assert (only_big.score, only_big.fraud) == (1.0, False)
    assert [(f.id, f.mode) for f in only_big.fired] == [("big", "enabled"), ("watch", "shadow")]
    both = e.decide(pay(amount=150, to="stranger"), 0)
    assert (both.score, both.fraud) == (1.5, True)
    assert [f.describe() for f in both.fired][-1] == "watch@1 [shadow]: AMOUNT=150 >= 100"


def test_decision_round_trips_through_json() -> None:
    d = engine(rule(when={"field": "TO", "op": "==", "value": "mom"})).decide(pay(), 0)
    again = Decision.from_dict(json.loads(d.to_json()))
    assert again == d and again is not None and again.fraud
    assert Decision.from_dict({"score": 1}) is None


# --- windows --------------------------------------------------------------------------------------


def count_rule(window_s: float = 60, value: float = 3, group_by: str = "ACCOUNT", **extra: Any) -> dict[str, Any]:
    return rule(aggregate={"function": "count", "group_by": group_by, "window_s": window_s, "op": ">", "value": value, **extra})


def test_count_in_a_sliding_window_per_account() -> None:
    e = engine(count_rule())
    table = MemoryTable()
    flags = [e.decide(pay(account="A", ts=t * S), t * S, table).fraud for t in (0, 10, 20)]
    flags.append(e.decide(pay(account="B", ts=25 * S), 25 * S, table).fraud)  # another account
    fourth = e.decide(pay(account="A", ts=30 * S), 30 * S, table)
    assert flags == [False, False, False, False] and fourth.fraud
    assert fourth.fired[0].reason == "count=4 in 60s > 3 (ACCOUNT=A)"
    # at 61 s the payment at 0 has left the window: 10, 20, 30, 61 is 4 again
    assert e.decide(pay(account="A", ts=61 * S), 61 * S, table).fraud
    # at 100 s only 61 and 100 are left
    assert e.decide(pay(account="A", ts=100 * S), 100 * S, table).fraud is False


def test_the_window_start_is_exact_to_one_bucket() -> None:
    """60 s in 1 s buckets: at 60.5 s the bucket [0, 1 s) is still read, so a payment at 0.2 s counts; at 61 s not."""
    e = engine(count_rule(value=1))
    for now, counted in ((60_500, True), (61_000, False)):
        table = MemoryTable()
        e.decide(pay(ts=200), 200, table)
        assert e.decide(pay(ts=now), now, table).fraud is counted  # an exact (now - 60 s, now] never holds 0.2 s


@pytest.mark.parametrize(("function", "expected"), [("sum", "sum(AMOUNT)=60"), ("avg", "avg(AMOUNT)=20"),
                                                    ("min", "min(AMOUNT)=10"), ("max", "max(AMOUNT)=30")])
def test_amount_aggregates(function: str, expected: str) -> None:
    e = engine(rule(aggregate={"function": function, "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 60, "op": ">=", "value": 0}))
    table = MemoryTable()
    for i, amount in enumerate((10, 20)):
        e.decide(pay(amount, ts=i * S), i * S, table)
    decision = e.decide(pay(30, ts=2 * S), 2 * S, table)
    assert decision.fired[0].reason == f"{expected} in 60s >= 0 (ACCOUNT=A)"


def test_aggregate_where_and_group_by_recipient() -> None:
    e = engine(count_rule(value=1, group_by="TO", where={"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}))
    table = MemoryTable()
    assert not e.decide(pay(to="x", payment_type="BITCOIN", account="A"), 0, table).fraud
    assert not e.decide(pay(to="x", payment_type="VISA", account="B"), S, table).fraud  # VISA not counted
    d = e.decide(pay(to="x", payment_type="BITCOIN", account="C"), 2 * S, table)
    assert d.fraud and d.fired[0].reason == "count=2 in 60s > 1 (TO=x)"


def test_small_then_large_within_a_minute() -> None:
    e = engine(rule(sequence={"group_by": "ACCOUNT", "within_s": 60,
                              "first": {"field": "AMOUNT", "op": "<", "value": 5},
                              "then": {"field": "AMOUNT", "op": ">=", "value": 500}}))
    table = MemoryTable()
    assert not e.decide(pay(900, account="A", ts=0), 0, table).fraud  # large first: no
    assert not e.decide(pay(2, account="A", ts=S), S, table).fraud
    d = e.decide(pay(800, account="A", ts=13 * S), 13 * S, table)
    assert d.fired[0].reason == "AMOUNT=2 < 5 then AMOUNT=800 >= 500 within 60s (ACCOUNT=A, 12s apart)"
    assert not e.decide(pay(800, account="B", ts=14 * S), 14 * S, table).fraud  # another account
    assert not e.decide(pay(800, account="A", ts=62 * S), 62 * S, table).fraud  # small one 61 s ago (exact times)


def test_a_stateful_rule_set_needs_a_table() -> None:
    with pytest.raises(ValueError, match="needs an EntityTable"):
        engine(count_rule()).decide(pay(), 0)


def test_late_payments_are_clamped_to_the_allowed_lateness() -> None:
    e = engine(count_rule(window_s=10, value=1))
    table = MemoryTable()
    e.decide(pay(ts=100 * S), 100 * S, table)
    late = e.decide(pay(ts=95 * S), 95 * S, table)  # 5 s late: its own time, window [85 s, 95 s]: only itself
    assert not late.fraud
    # 90 s late: counted at 100 s - ALLOWED_LATENESS_MS = 70 s; window [60 s, 70 s]: only itself again
    assert not e.decide(pay(ts=10 * S), 10 * S, table).fraud
    at_bound = e.decide(pay(ts=71 * S), 71 * S, table)  # [61 s, 71 s] holds the one clamped to 70 s
    assert at_bound.fired[0].reason == "count=2 in 10s > 1 (ACCOUNT=A)"
    assert ALLOWED_LATENESS_MS == 30_000


def test_compound_keys_first_payment_to_a_payee_and_new_payee_then_large() -> None:
    e = Engine(parse_ruleset({"rules": [
        {"id": "first-to-payee", "mode": "shadow",
         "aggregate": {"function": "count", "group_by": ["TO", "ACCOUNT"], "window_s": 2_592_000, "op": "==", "value": 1}},
        {"id": "new-payee-large", "when": {"field": "AMOUNT", "op": ">=", "value": 500},
         "aggregate": {"function": "age", "group_by": ["ACCOUNT", "TO"], "window_s": 2_592_000, "op": "<", "value": 3600}},
    ]}))
    table = MemoryTable()
    day = 86_400 * S
    first = e.decide(pay(10, to="bob", ts=0), 0, table)
    assert [f.reason for f in first.fired] == ["count=1 in 30d == 1 (ACCOUNT=A, TO=bob)"]
    assert not e.decide(pay(10, to="bob", ts=day), day, table).fired  # second time: known
    quick = e.decide(pay(900, to="eve", ts=day + 10 * S), day + 10 * S, table)  # first to eve
    assert [f.reason for f in quick.fired] == [
        "count=1 in 30d == 1 (ACCOUNT=A, TO=eve)", "AMOUNT=900 >= 500; age=0 in 30d < 3600 (ACCOUNT=A, TO=eve)"]
    soon = e.decide(pay(700, to="eve", ts=day + 600 * S), day + 600 * S, table)
    assert [f.reason for f in soon.fired] == ["AMOUNT=700 >= 500; age=590 in 30d < 3600 (ACCOUNT=A, TO=eve)"]
    assert not e.decide(pay(700, to="bob", ts=2 * day), 2 * day, table).fired  # bob is a payee of a day
    assert table.get(b"ACCOUNT,TO=A\x1feve") is not None  # the documented key scheme
    assert e.group_keys == (("ACCOUNT", "TO"),)


def test_distinct_and_zscore_reasons() -> None:
    e = Engine(parse_ruleset({"rules": [
        {"id": "many-accounts", "aggregate": {"function": "distinct", "field": "ACCOUNT", "group_by": "DEVICE",
                                              "window_s": 3600, "op": ">", "value": 2}},
        {"id": "unusual", "aggregate": {"function": "zscore", "field": "AMOUNT", "group_by": "ACCOUNT",
                                        "window_s": 86_400, "op": ">", "value": 3, "min_count": 2}},
    ]}))
    table = MemoryTable()

    def device_pay(account: str, amount: int, t: int) -> Payment:
        return Payment("01/22/2023", "11:50:50", "VISA", amount, "mom", None, account, t, device="dev-1")

    for i, (account, amount) in enumerate((("A", 10), ("A", 12), ("B", 8))):
        assert not e.decide(device_pay(account, amount, i * S), i * S, table).fired
    d = e.decide(device_pay("C", 10, 3 * S), 3 * S, table)
    assert [f.reason for f in d.fired] == ["distinct(ACCOUNT)=3 in 1h > 2 (DEVICE=dev-1)"]
    z = e.decide(device_pay("A", 100, 4 * S), 4 * S, table)  # A's earlier: 10, 12 (mean 11, sd 1)
    assert z.fired[-1].reason == "zscore(AMOUNT)=89 in 24h > 3 (ACCOUNT=A; AMOUNT=100, mean=11, sd=1, n=2)"


def test_zscore_needs_min_count_and_handles_a_constant_history() -> None:
    e = engine(rule(aggregate={"function": "zscore", "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 3600, "op": ">", "value": 3}))
    table = MemoryTable()
    for i in range(4):
        assert not e.decide(pay(50, ts=i * S), i * S, table).fired  # fewer than 5 earlier payments: never fires
    assert not e.decide(pay(5000, ts=4 * S), 4 * S, table).fired  # 4 earlier: still not
    table = MemoryTable()
    for i in range(5):
        e.decide(pay(50, ts=i * S), i * S, table)
    assert not e.decide(pay(50, ts=5 * S), 5 * S, table).fired  # sd 0, the mean itself: z = 0
    assert e.decide(pay(51, ts=6 * S), 6 * S, table).fired[0].reason == (
        "zscore(AMOUNT)=inf in 1h > 3 (ACCOUNT=A; AMOUNT=51, mean=50, sd=0, n=6)")


def test_notes_while_a_window_fills_and_not_after() -> None:
    e = engine(count_rule())
    table = MemoryTable()
    first = e.decide(pay(ts=0), 0, table)
    assert first.notes == ("r@1: its 60s window is still filling (history recorded since 1970-01-01T00:00:00Z)",)
    assert json.loads(first.to_json())["notes"] == list(first.notes)
    assert Decision.from_dict(json.loads(first.to_json())) == first
    later = e.decide(pay(ts=60 * S), 60 * S, table)
    assert later.notes == () and "notes" not in later.to_dict()
    # A rule added later fills its own window; a rule set that stops recording forgets its history's start
    both = engine(count_rule(), count_rule(window_s=3600) | {"id": "hour"})
    assert both.decide(pay(ts=61 * S), 61 * S, table).notes == (
        "hour@1: its 1h window is still filling (history recorded since 1970-01-01T00:01:01Z)",)
    engine(rule(when={"field": "TO", "op": "==", "value": "x"})).decide(pay(ts=62 * S), 62 * S, table)
    assert e.decide(pay(ts=63 * S), 63 * S, table).notes[0].endswith("since 1970-01-01T00:01:03Z)")


def test_original_rule_decisions_have_no_notes_and_the_same_json() -> None:
    d = Engine(ORIGINAL).decide(pay(payment_type="BITCOIN"), 0, MemoryTable())
    assert d.to_json() == (b'{"fraud":true,"score":1.0,"threshold":1.0,"rules":[{"id":"bitcoin","version":1,"mode":"enabled",'
                           b'"weight":1.0,"reason":"PAYMENT_TYPE == BITCOIN"}]}')


# --- live changes and the detector's state -----------------------------------------------------


def rules_record(key: bytes | None, value: Any, offset: int = 0) -> Any:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return record(raw, topic="fraud_rules", key=key, offset=offset)


def test_live_rules_add_replace_remove_and_reject() -> None:
    rejected: list[str] = []
    live = LiveRules(ORIGINAL, None, lambda rec, reason: rejected.append(reason))
    big = {"id": "big", "when": {"field": "AMOUNT", "op": ">", "value": 90}}
    live.apply(rules_record(b"big", big))
    assert [r.ref for r in live.current.rules] == ["bitcoin@1", "big@1"]
    live.apply(rules_record(b"big", big | {"version": 2, "mode": "shadow"}))
    assert [(r.ref, r.mode) for r in live.current.rules] == [("bitcoin@1", "enabled"), ("big@2", "shadow")]
    before = live.current
    live.apply(rules_record(b"bad", {"id": "bad", "when": {"field": "AMOUNT", "op": ">", "value": "x"}}))
    live.apply(rules_record(b"other", big))
    live.apply(rules_record(b"x", b"{not json"))
    live.apply(rules_record(None, big))
    assert live.current is before and live.rejected == 4
    assert [r.split(":")[0] for r in rejected] == ["rule 'bad'", "rule 'other'", "rule 'x'", "key"]
    live.apply(rules_record(b"bitcoin", None))  # a tombstone removes a baseline rule too
    assert [r.ref for r in live.current.rules] == ["big@2"]


class ReplayLog:
    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, partition: int, since_ms: int, until_offset: int) -> Any:
        self.calls.append((partition, since_ms, until_offset))
        return iter(r for r in self.records if r.partition == partition and r.offset < until_offset)


class Rig:
    """A Detector on a mocked producer, its state in local stores under ``folder`` and an in-memory changelog."""

    def __init__(self, ruleset: RuleSet, folder: Path, live: LiveRules | None = None, replay: ReplayLog | None = None) -> None:
        self.producer = MagicMock(spec_set=Producer)
        self.producer.partition_count.return_value = 2  # the routed topics' partitions
        lines = LineBuffer(Summary("t", "payments"), True, io.StringIO())
        settings = Settings(ConnectionSettings(("localhost:9091",)))
        self.rules = live or LiveRules(ruleset, None, lambda rec, reason: None)
        self.log = ChangelogLog()
        self.states = PartitionStates(folder, "g", "payments", TOPIC, LogReader(self.log), encode_entity, decode_entity)  # type: ignore[arg-type]
        self.detector = Detector(Output(self.producer), settings, DeadLetters(Output(self.producer), "dlq", "t"), lines,
                                 self.rules, self.states, replay)
        self._sent = 0

    def assign(self, *partitions: int) -> None:
        self.detector.partitions_assigned(set(partitions))
        while self.detector.waiting():
            self.detector.restore(GroupConsumer(), 1.0)  # type: ignore[arg-type]

    def batch(self, *records: Any) -> None:
        batch: dict[TopicPartition, list[Any]] = {}
        for r in records:
            batch.setdefault(TopicPartition("payments", r.partition), []).append(r)
        self.detector.begin_batch(batch)
        for r in records:
            self.detector.handle(r)

    def commit(self) -> None:
        """What the loop's Checkpoint and the Delivery do: send the changes, commit, then emit."""
        self.detector.prepare_commit({})
        for change in sends(self.producer)[self._sent:]:
            if change.topic == TOPIC:
                assert change.key is not None and change.partition is not None
                self.log.send(TOPIC, change.key, change.value, change.partition)
        self._sent = len(sends(self.producer))
        self.log.commit()
        self.detector.emit()

    def roll_back(self) -> None:
        self._sent = len(sends(self.producer))
        self.log.abort()
        self.detector.discard()
        while self.detector.waiting():
            self.detector.restore(GroupConsumer(), 1.0)  # type: ignore[arg-type]

    def reasons(self) -> list[str]:
        return [d.fired[0].reason if d.fired else "" for d in decisions(self.producer)]


def payment_record(t: int, partition: int = 3, account: str = "A") -> Any:
    return record(encode(pay(account=account, ts=t * S)), partition=partition, offset=t, key=account.encode(), timestamp=t * S)


def test_the_detector_keeps_each_partitions_state_and_a_roll_back_counts_nothing_twice(tmp_path: Path) -> None:
    rig = Rig(parse_ruleset({"rules": [count_rule(value=2)]}), tmp_path)
    rig.assign(3)
    rig.batch(payment_record(0), payment_record(1), payment_record(2))
    rig.commit()
    assert rig.reasons()[-1] == "count=3 in 60s > 2 (ACCOUNT=A)"
    assert [k for k, _ in rig.log.records[3]] == [b"\x00partition", b"ACCOUNT=A"]  # committed: in the changelog
    rig.batch(payment_record(3))
    rig.roll_back()  # an aborted transaction: offset 3 is read again, from the committed state
    rig.batch(payment_record(3))
    rig.commit()
    assert rig.reasons()[-2:] == ["count=4 in 60s > 2 (ACCOUNT=A)", "count=4 in 60s > 2 (ACCOUNT=A)"]
    rig.assign(1)  # partition 3 moved away: its store closes
    assert set(rig.states.tables) == {1}
    rig.assign(1, 3)  # and back: from its local store
    rig.batch(payment_record(4))
    assert rig.reasons()[-1] == "count=5 in 60s > 2 (ACCOUNT=A)"


def test_a_rule_enabled_again_says_its_window_is_filling(tmp_path: Path) -> None:
    burst = count_rule(value=2) | {"id": "burst"}
    live = LiveRules(parse_ruleset({"rules": [burst]}), None, lambda rec, reason: None)
    rig = Rig(live.current, tmp_path, live)
    rig.assign(3)
    rig.batch(payment_record(0), payment_record(1))
    live.current = live.current.with_rule(parse_rule(burst | {"mode": "disabled", "version": 2}))
    rig.detector._use(Engine(live.current))
    rig.batch(payment_record(2))  # not recorded: no active rule reads the history
    live.current = live.current.with_rule(parse_rule(burst | {"version": 3}))
    rig.detector._use(Engine(live.current))
    rig.batch(payment_record(3))
    last = decisions(rig.producer)[-1]
    assert [f.reason for f in last.fired] == ["count=3 in 60s > 2 (ACCOUNT=A)"]  # 0, 1 and 3: not 2
    assert last.notes == ("burst@3: its 60s window is still filling (history recorded since 1970-01-01T00:00:03Z)",)


def test_without_a_changelog_a_partition_read_before_is_rebuilt_from_the_input(tmp_path: Path) -> None:
    replay = ReplayLog([payment_record(t) for t in range(6)])
    rig = Rig(parse_ruleset({"rules": [count_rule(value=2)]}), tmp_path, replay=replay)
    rig.assign(3)
    rig.batch(payment_record(2))  # the group had read offsets 0 and 1 before the changelog existed
    since = -60 * S - ALLOWED_LATENESS_MS - MAX_CLOCK_SKEW_MS
    assert replay.calls == [(3, 2 * S + since, 2)]
    assert rig.reasons() == ["count=3 in 60s > 2 (ACCOUNT=A)"]
    rig.batch(payment_record(3))
    assert len(replay.calls) == 1  # once


def decisions(producer: MagicMock) -> list[Decision]:
    found = []
    for routed in sends(producer):
        if routed.topic == TOPIC:
            continue
        decision = Decision.from_dict(json.loads(routed.value or b"")["DECISION"])
        assert decision is not None
        found.append(decision)
    return found


def test_decision_headers_name_enabled_and_shadow_rules() -> None:
    e = engine(rule(when={"field": "TO", "op": "==", "value": "mom"}),
               {"id": "watch", "mode": "shadow", "when": {"field": "AMOUNT", "op": ">", "value": 1}})
    assert decision_header(e.decide(pay(), 0)) == ("decision", b"fraud score=1 rules=r@1 shadow=watch@1")
    assert decision_header(e.decide(pay(amount=1, to="me"), 0)) == ("decision", b"legit score=0")


def test_threshold_tolerates_float_sums() -> None:
    e = Engine(parse_ruleset({"threshold": 0.8, "rules": [
        {"id": "a", "weight": 0.7, "when": {"field": "TO", "op": "==", "value": "mom"}},
        {"id": "b", "weight": 0.1, "when": {"field": "TO", "op": "==", "value": "mom"}},
    ]}))
    assert e.decide(pay(), 0).fraud


def test_with_field_appends_to_the_object_and_keeps_the_rest() -> None:
    raw = b'{"DATE": "01/22/2023", "AMOUNT": 4}  \n'
    out = with_field(raw, "DECISION", b'{"fraud":true}')
    assert out == b'{"DATE": "01/22/2023", "AMOUNT": 4}'[:-1] + b', "DECISION": {"fraud":true}}'
    assert json.loads(out)["DECISION"] == {"fraud": True}


def test_reasons_line_is_one_printable_line() -> None:
    bad = {"fraud": True, "score": 1, "threshold": 1,
           "rules": [{"id": "x", "version": 1, "mode": "enabled", "weight": 1, "reason": "AMOUNT=1\n[ALERT] fake"}]}
    line = reasons_line(Payment("01/22/2023", "11:50:50", "BITCOIN", 1, "me", decision=bad))
    assert line == "    score 1 >= 1: x@1: AMOUNT=1?[ALERT] fake"
    huge = bad | {"score": 10**400}
    assert reasons_line(Payment("01/22/2023", "11:50:50", "BITCOIN", 1, "me", decision=huge)) is None
    assert reasons_line(pay()) is None


def test_event_time_is_bounded_by_the_record_and_the_clock() -> None:
    assert event_time(pay(ts=5 * S), 4 * S) == 5 * S
    assert event_time(pay(ts=10**12), 4 * S) == 4 * S + MAX_CLOCK_SKEW_MS
    assert event_time(pay(ts=10**12), 0, now_ms=7 * S) == 7 * S + MAX_CLOCK_SKEW_MS
    assert event_time(Payment("01/22/2023", "11:50:50", "VISA", 1, "me"), 9 * S) == 9 * S  # no TIMESTAMP_MS


def test_a_rule_record_that_breaks_the_parser_is_rejected() -> None:
    rejected: list[str] = []
    live = LiveRules(ORIGINAL, None, lambda rec, reason: rejected.append(reason))
    live.apply(rules_record(b"deep", b"[" * 100_000 + b"]" * 100_000))
    assert live.current is ORIGINAL and len(rejected) == 1 and "not JSON" in rejected[0]


