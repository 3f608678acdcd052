"""Bucketed aggregates against brute force over the exact payments, their encoding, their bounds, their validation.

The bucketed window of W in buckets of w, at time ``now`` (payments in
event-time order), holds exactly the payments with
``floor((now - W) / w) * w <= t <= now``: every payment of the exact window
``(now - W, now]``, plus those of the oldest bucket's part before it (less
than one bucket width). The brute force below computes each function over
that set of the exact payment list.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from datasketches import hll_sketch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_pipeline.payment import Payment
from fraud_pipeline.rules import Engine, MemoryTable, RuleError, decode_entity, encode_entity, parse_rule, parse_ruleset
from fraud_pipeline.rules.aggregates import (
    HLL_LG_K,
    MAX_EXACT_DISTINCT,
    META_KEY,
    SEQUENCE_KEEP,
    Counts,
    Distinct,
    Firsts,
    KeyState,
    bucket_width_ms,
)

S = 1000
NEVER = -1e300
"""A threshold no observed value equals: ``!=`` it makes a rule fire whenever it has a value, to read it."""
FUNCTIONS = ("count", "sum", "avg", "min", "max", "distinct", "age", "zscore")


def pay(account: str, amount: int, to: str, at: int, device: str | None = None) -> Payment:
    return Payment("01/22/2023", "11:50:50", "VISA", amount, to, None, account, at, device=device)


def observing(window_s: int, where: dict[str, Any] | None = None) -> Engine:
    """One shadow rule per function, each firing whenever it has a value, over ``window_s``."""
    rules = []
    for fn in FUNCTIONS:
        agg: dict[str, Any] = {"function": fn, "group_by": "ACCOUNT", "window_s": window_s, "op": "!=", "value": NEVER}
        if fn in ("sum", "avg", "min", "max", "zscore"):
            agg["field"] = "AMOUNT"
        if fn == "distinct":
            agg["field"] = "TO"
        if fn == "zscore":
            agg["min_count"] = 1
        if where is not None:
            agg["where"] = where
        rules.append({"id": fn, "mode": "shadow", "aggregate": agg})
    return Engine(parse_ruleset({"rules": rules}))


def observed(decision: Any) -> dict[str, float]:
    """``{function: value}`` read from the reasons (values shown to 2 decimals)."""
    found = {}
    for fired in decision.fired:
        match = re.match(r"[a-z]+(?:\([A-Z_]+\))?=(-?inf|-?[\d.]+) in ", fired.reason)
        assert match, fired.reason
        found[fired.id] = float(match.group(1))
    return found


def brute(fn: str, earlier: list[tuple[int, Payment]], current: Payment, now: int, start: int, current_counts: bool) -> float | None:
    """``fn`` over the earlier payments with ``start <= t <= now`` (and the current one when it counts), exactly."""
    inside = [p for t, p in earlier if start <= t <= now]
    everyone = inside + ([current] if current_counts else [])
    amounts = [float(p.amount) for p in everyone]
    if fn == "count":
        return len(everyone)
    if fn == "distinct":
        return len({p.to for p in everyone}) or None
    if fn == "age":
        times = [t for t, p in earlier if start <= t <= now] + ([now] if current_counts else [])
        return (now - min(times)) / 1000 if times else None
    if fn == "zscore":
        if not current_counts or not inside:
            return None
        values = [float(p.amount) for p in inside]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        value = float(current.amount)
        if sd <= 1e-9 * max(1.0, abs(mean)):
            return 0.0 if abs(value - mean) <= 1e-9 * max(1.0, abs(mean)) else math.copysign(math.inf, value - mean)
        return (value - mean) / sd
    if not amounts:
        return None
    return {"sum": sum(amounts), "avg": sum(amounts) / len(amounts), "min": min(amounts), "max": max(amounts)}[fn]


def close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= 0.006 + 1e-6 * abs(b)


streams = st.lists(
    st.tuples(st.integers(0, 40_000), st.sampled_from("AB"), st.integers(0, 60), st.sampled_from(["me", "mom", "dad", "x"])),
    min_size=1, max_size=50,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, window_s=st.sampled_from([60, 90, 3600]), scale=st.sampled_from([1, 30, 600]),
       filtered=st.booleans())
def test_every_function_matches_brute_force_over_the_bucketed_window(
    stream: list[tuple[int, str, int, str]], window_s: int, scale: int, filtered: bool,
) -> None:
    where = {"field": "AMOUNT", "op": ">=", "value": 20} if filtered else None
    engine = observing(window_s, where)
    plain, round_trip = MemoryTable(), MemoryTable(round_trip=True)
    window, width = window_s * S, bucket_width_ms(window_s * S)
    history: dict[str, list[tuple[int, Payment]]] = {"A": [], "B": []}
    now = 10**12
    for gap, account, amount, to in stream:
        now += gap * scale // 10  # up to 40 s, 20 min or 40 min between payments
        p = pay(account, amount, to, now)
        decision = engine.decide(p, now, plain)
        assert engine.decide(p, now, round_trip) == decision  # bytes or objects: the same decision
        seen = observed(decision)
        start = (now - window) // width * width
        counts = where is None or amount >= 20
        earlier = [(t, q) for t, q in history[account] if where is None or q.amount >= 20]
        for fn in FUNCTIONS:
            expected = brute(fn, earlier, p, now, start, counts)
            if expected is None:
                assert fn not in seen, (fn, decision)
            else:
                assert fn in seen and close(seen[fn], expected), (fn, seen.get(fn), expected)
        history[account].append((now, p))
    for key in round_trip.data:
        raw = round_trip.data[key]
        assert encode_entity(decode_entity(raw)) == raw
        assert encode_entity(plain.data[key]) == raw  # deterministic: the same history, the same bytes


def test_window_widths_follow_the_ladder() -> None:
    assert [bucket_width_ms(s * S) // S for s in (1, 60, 61, 3600, 86_400, 2_592_000)] == [1, 1, 2, 60, 1800, 43_200]
    for seconds in (1, 59, 60, 61, 599, 3600, 7201, 86_400, 10 * 86_400, 2_592_000):
        assert seconds * S / bucket_width_ms(seconds * S) <= 60


def distinct_engine(window_s: int = 3600) -> Engine:
    return Engine(parse_ruleset({"rules": [{"id": "d", "mode": "shadow", "aggregate": {
        "function": "distinct", "field": "ACCOUNT", "group_by": "DEVICE", "window_s": window_s, "op": "!=", "value": NEVER}}]}))


def run_distinct(n: int, table: MemoryTable, engine: Engine, t0: int = 0) -> float:
    last = 0.0
    for i in range(n):
        at = t0 + i * 100
        last = observed(engine.decide(pay(f"ACC{i:06d}", 1, "me", at, device="dev"), at, table))["d"]
    return last


def test_distinct_is_exact_up_to_the_bound_then_within_the_sketch_error() -> None:
    engine = distinct_engine()
    table = MemoryTable()
    assert run_distinct(MAX_EXACT_DISTINCT, table, engine) == MAX_EXACT_DISTINCT
    entity = table.get(b"DEVICE=dev")
    assert isinstance(entity, KeyState)
    assert isinstance(series := next(iter(entity.series.values())), Distinct) and series.seen is not None
    table = MemoryTable()
    n = 5000
    estimate = run_distinct(n, table, engine)
    error = abs(hll_sketch.get_rel_err(True, True, HLL_LG_K, 3))  # three standard deviations: 6.6 %
    assert abs(estimate - n) <= error * n, (estimate, error)
    entity = table.get(b"DEVICE=dev")
    assert isinstance(entity, KeyState)
    assert isinstance(series := next(iter(entity.series.values())), Distinct) and series.sketches is not None
    # sketches survive the round trip byte for byte, and decide the same
    raw = encode_entity(entity)
    assert encode_entity(decode_entity(raw)) == raw
    plain, round_trip = MemoryTable(), MemoryTable(round_trip=True)
    for table_ in (plain, round_trip):
        run_distinct(1500, table_, engine)
    p = pay("new", 1, "me", 1500 * 100, device="dev")
    assert engine.decide(p, 1500 * 100, plain) == engine.decide(p, 1500 * 100, round_trip)
    # once the sketched buckets expire, the key counts exactly again
    later = 10 * 3600 * S
    assert observed(engine.decide(pay("z", 1, "me", later, device="dev"), later, plain))["d"] == 1
    entity = plain.get(b"DEVICE=dev")
    assert isinstance(entity, KeyState) and next(iter(entity.series.values())).seen == {"z": later // (60 * S)}  # type: ignore[union-attr]


def test_entities_stay_bounded_at_a_high_rate() -> None:
    engine = Engine(parse_ruleset({"rules": [
        {"id": "burst", "aggregate": {"function": "count", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 5}},
        {"id": "sum-hour", "aggregate": {"function": "sum", "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 3600,
                                         "op": ">", "value": 10**9}},
        {"id": "z-day", "aggregate": {"function": "zscore", "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 86_400,
                                      "op": ">", "value": 50}},
        {"id": "payees", "aggregate": {"function": "distinct", "field": "TO", "group_by": "ACCOUNT", "window_s": 60,
                                       "op": ">", "value": 10**6}},
        {"id": "seq", "sequence": {"group_by": "ACCOUNT", "within_s": 60, "first": {"field": "AMOUNT", "op": "<", "value": 5},
                                   "then": {"field": "AMOUNT", "op": ">=", "value": 10**9}}},
    ]}))
    table = MemoryTable()
    sizes = []
    for i in range(200 * 300):  # 200 payments a second for 5 minutes, then a day later
        at = i * 5 if i < 200 * 290 else 86_400 * S + i * 5
        engine.decide(pay("hot", i % 7, f"payee{i % 5000}", at), at, table)
        if i % 5000 == 4999:
            sizes.append(len(table.encoded(b"ACCOUNT=hot") or b""))
    entity = table.get(b"ACCOUNT=hot")
    assert isinstance(entity, KeyState)
    for sid, series in entity.series.items():
        if isinstance(series, Counts):
            assert len(series.idx) <= 60 + 30 + 2, sid
        elif isinstance(series, Firsts):
            assert len(series.times) <= SEQUENCE_KEEP
    # bounded (the distinct series, past 1,000 payees, holds ~92 sketches of ~1 KB), and shrinks once the buckets expire
    saturated = sizes[3:-1]
    assert max(sizes) < 300_000 and max(saturated) - min(saturated) < 1000 and sizes[-1] < max(sizes) / 5
    assert META_KEY in table.data


@pytest.mark.parametrize(
    ("aggregate", "message"),
    [
        ({"function": "count", "group_by": ["ACCOUNT", "TO", "IP", "CARD"]}, "aggregate.group_by: must be one of"),
        ({"function": "count", "group_by": ["ACCOUNT", "ACCOUNT"]}, "aggregate.group_by: must be one of"),
        ({"function": "count", "group_by": []}, "aggregate.group_by: must be one of"),
        ({"function": "count", "group_by": "AMOUNT"}, "aggregate.group_by: must be one of"),
        ({"function": "distinct", "group_by": "DEVICE"}, "aggregate.field: must be one of DATE"),
        ({"function": "age", "field": "AMOUNT", "group_by": "ACCOUNT"}, "aggregate.field: age takes no field"),
        ({"function": "zscore", "field": "TO", "group_by": "ACCOUNT"}, "aggregate.field: must be one of AMOUNT, TIMESTAMP_MS"),
        ({"function": "zscore", "field": "AMOUNT", "group_by": "ACCOUNT", "min_count": 0}, "aggregate.min_count: must be a whole"),
        ({"function": "count", "group_by": "ACCOUNT", "min_count": 3}, "aggregate.min_count: is for zscore only"),
        ({"function": "count", "group_by": "ACCOUNT", "window_s": 2_592_001}, "aggregate.window_s: must be at most 2592000 s"),
        ({"function": "count", "group_by": "ACCOUNT", "window_s": 0.9}, "aggregate.window_s: must be at least 1 s"),
        ({"function": "count", "group_by": "ACCOUNT", "within_s": 60}, "aggregate: unknown key(s) 'within_s'"),
    ],
)
def test_bad_aggregates_are_refused_naming_rule_and_field(aggregate: dict[str, Any], message: str) -> None:
    data = {"window_s": 60, "op": ">", "value": 1} | aggregate
    with pytest.raises(RuleError) as error:
        parse_rule({"id": "bad", "aggregate": data})
    assert str(error.value).startswith(f"rule 'bad': {message}"), str(error.value)


def test_compound_groups_are_canonical_and_skip_payments_lacking_a_field() -> None:
    rule = parse_rule({"id": "r", "aggregate": {"function": "count", "group_by": ["DEVICE", "ACCOUNT", "IP"], "window_s": 60,
                                                "op": ">", "value": 0}})
    assert rule.group_by == ("ACCOUNT", "DEVICE", "IP")
    engine = Engine(parse_ruleset({"rules": [dict(rule.source or {})]}))
    table = MemoryTable()
    assert not engine.decide(pay("A", 1, "me", 0, device="d"), 0, table).fired  # no IP: not grouped
    full = Payment("01/22/2023", "11:50:50", "VISA", 1, "me", None, "A", 0, device="d", ip="10.0.0.1")
    assert engine.decide(full, 0, table).fired[0].reason == "count=1 in 60s > 0 (ACCOUNT=A, DEVICE=d, IP=10.0.0.1)"
    assert set(table.data) == {META_KEY, b"ACCOUNT,DEVICE,IP=A\x1fd\x1f10.0.0.1"}
