from __future__ import annotations

import datetime
import random
from collections import defaultdict
from itertools import islice, pairwise

import pytest
import pytz

from fraud_pipeline.payment import PAYMENT_TYPES, decode, encode, seoul_date_time
from fraud_pipeline.scenarios import (
    DEFAULT_MIX,
    FRAUD,
    LEGIT,
    NO_SCENARIOS,
    SCENARIOS,
    Labelled,
    Mix,
    labelled_stream,
    parse_mix,
    plan_burst,
    plan_busy_shopper,
    plan_small_then_large,
    plan_takeover,
    simulated_clock,
)

START = datetime.datetime(2024, 1, 1, tzinfo=pytz.utc)


def stream(mix: Mix, count: int, seed: int | None = 1, accounts: int = 1000, rate: float = 20.0) -> list[Labelled]:
    return list(islice(labelled_stream(seed, accounts, mix, simulated_clock(START, rate)), count))


def by_account(items: list[Labelled], scenario: str) -> dict[str, list[Labelled]]:
    """The scenario's payments grouped per account, in emission order."""
    groups: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        if item.scenario == scenario:
            assert item.payment.account is not None
            groups[item.payment.account].append(item)
    return groups


# --- clock and determinism ---------------------------------------------------


def test_simulated_clock_advances_one_interval_per_call() -> None:
    clock = simulated_clock(START, 4.0)
    times = [clock() for _ in range(5)]
    assert times[0] == START
    assert [(t - START).total_seconds() for t in times] == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_simulated_clock_needs_a_positive_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        simulated_clock(START, rate)


def test_a_seed_gives_the_same_stream_and_another_seed_another() -> None:
    first = stream(DEFAULT_MIX, 5000, seed=7)
    assert first == stream(DEFAULT_MIX, 5000, seed=7)
    other = stream(DEFAULT_MIX, 5000, seed=8)
    assert [i.payment.payment_id for i in first] != [i.payment.payment_id for i in other]


def test_without_scenarios_the_stream_is_the_tutorials_random_payments() -> None:
    items = stream(NO_SCENARIOS, 3000)
    assert {(i.label, i.scenario) for i in items} == {(LEGIT, "normal")}
    assert {i.payment.payment_type for i in items} == set(PAYMENT_TYPES)
    assert max(i.payment.amount for i in items) == 100


def test_payments_are_stamped_when_emitted() -> None:
    items = stream(DEFAULT_MIX, 20000)
    stamps = [i.payment.timestamp_ms for i in items]
    # one payment per 50 ms tick of the simulated clock, scenario payments included
    assert stamps == [int(START.timestamp() * 1000) + 50 * n for n in range(len(items))]
    for item in items[::997]:
        assert item.payment.timestamp_ms is not None
        at = datetime.datetime.fromtimestamp(item.payment.timestamp_ms / 1000, pytz.utc)
        assert (item.payment.date, item.payment.time) == seoul_date_time(at)
    assert len({i.payment.payment_id for i in items}) == len(items)


def test_accounts_come_from_the_pool() -> None:
    items = stream(parse_mix("burst=0.05,takeover=0.05,big-spender=0.05"), 5000, accounts=30)
    assert {i.payment.account for i in items} <= {f"ACC{n:05d}" for n in range(30)}
    assert {i.scenario for i in items} == {"normal", "burst", "takeover", "big-spender"}


# --- every payment goes over the wire ------------------------------------------


def test_every_payment_round_trips_through_encode_and_decode() -> None:
    rich = Mix(dict.fromkeys(SCENARIOS, 0.02))
    items = stream(rich, 20000)
    assert {i.scenario for i in items} == {"normal", *SCENARIOS}
    for item in items:
        assert decode(encode(item.payment)) == item.payment


def test_default_mix_is_a_few_percent_fraud() -> None:
    items = stream(DEFAULT_MIX, 30000, seed=3)
    share = sum(i.label == FRAUD for i in items) / len(items)
    assert 0.01 < share < 0.06
    assert {i.scenario for i in items} == {"normal", *SCENARIOS}


# --- labels per scenario --------------------------------------------------------


def test_burst_plan_first_five_legit_then_fraud() -> None:
    for seed in range(200):
        plan = plan_burst(random.Random(seed), "ACC00001")
        assert 8 <= len(plan) <= 12
        assert [p.label for _, p in plan] == [LEGIT] * 5 + [FRAUD] * (len(plan) - 5)
        offsets = [offset for offset, _ in plan]
        assert all(2 <= b - a <= 6 for a, b in pairwise(offsets))
        assert all(1 <= p.amount <= 30 and p.payment_type != "BITCOIN" and p.account == "ACC00001" for _, p in plan)


def test_bursts_in_the_stream_are_labelled_in_order() -> None:
    # many accounts: two scenarios almost never share one
    items = stream(parse_mix("burst=0.01"), 20000, accounts=10**6)
    end_ms = items[-1].payment.timestamp_ms or 0
    groups = by_account(items, "burst")
    assert len(groups) > 50
    for burst in groups.values():
        assert [i.label for i in burst] == [LEGIT] * min(5, len(burst)) + [FRAUD] * (len(burst) - 5)
        first_ms, last_ms = burst[0].payment.timestamp_ms or 0, burst[-1].payment.timestamp_ms or 0
        assert last_ms - first_ms <= 11 * 6000 + 1000
        if end_ms - first_ms > 80_000:  # not cut short by the end of the stream
            assert 8 <= len(burst) <= 12


def test_small_then_large_probe_is_legit_and_large_is_fraud() -> None:
    for seed in range(200):
        (t0, probe), (t1, large) = plan_small_then_large(random.Random(seed), "ACC00002")
        assert probe.label == LEGIT and 0 <= probe.amount <= 4
        assert large.label == FRAUD and 500 <= large.amount <= 2000
        assert 5 <= t1 - t0 <= 40


def test_large_to_stranger_is_one_fraud_card_payment() -> None:
    items = [i for i in stream(parse_mix("large-to-stranger=0.05"), 10000) if i.scenario == "large-to-stranger"]
    assert len(items) > 300
    for item in items:
        assert item.label == FRAUD
        assert item.payment.to == "stranger" and 500 <= item.payment.amount <= 5000
        assert item.payment.payment_type in ("VISA", "MASTERCARD")


def test_takeover_owner_payments_legit_then_bitcoin_to_stranger_fraud() -> None:
    for seed in range(200):
        plan = plan_takeover(random.Random(seed), "ACC00003")
        owner = [(t, p) for t, p in plan if p.label == LEGIT]
        thief = [(t, p) for t, p in plan if p.label == FRAUD]
        assert 1 <= len(owner) <= 3 and 1 <= len(thief) <= 3
        assert plan == owner + thief
        assert all(p.payment_type in ("VISA", "MASTERCARD") and p.amount <= 100 for _, p in owner)
        assert all(p.payment_type == "BITCOIN" and p.to == "stranger" and 200 <= p.amount <= 1000 for _, p in thief)
        assert 10 <= thief[0][0] - owner[-1][0] <= 60


def test_legit_noise_is_labelled_legit() -> None:
    items = stream(parse_mix("big-spender=0.05,busy-shopper=0.05"), 10000)
    spenders = [i for i in items if i.scenario == "big-spender"]
    assert len(spenders) > 300
    assert all(i.label == LEGIT and i.payment.to != "stranger" and 150 <= i.payment.amount <= 1000 for i in spenders)
    assert all(i.label == LEGIT for i in items if i.scenario == "busy-shopper")
    for seed in range(200):
        plan = plan_busy_shopper(random.Random(seed), "ACC00004")
        assert 3 <= len(plan) <= 4
        assert max(t for t, _ in plan) - min(t for t, _ in plan) <= 60
        assert all(p.amount <= 100 and p.payment_type != "BITCOIN" for _, p in plan)


# --- mix parsing -------------------------------------------------------------------


def test_parse_mix_named_and_listed() -> None:
    assert parse_mix("default") is DEFAULT_MIX
    assert parse_mix("none") == {} and len(parse_mix("none")) == 0
    mix = parse_mix(" takeover=0.003, burst=0.004 ")
    assert dict(mix) == {"burst": 0.004, "takeover": 0.003}
    assert list(mix) == ["burst", "takeover"]  # the order starts are drawn in, whatever the text's
    assert parse_mix(mix.text()) == mix
    assert parse_mix("burst=0") == NO_SCENARIOS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("brust=0.1", r"unknown scenario 'brust'; known: burst, small-then-large, large-to-stranger, takeover, big-spender, busy-shopper"),
        ("burst=lots", r"'burst=lots': rate must be a number in \[0, 1\], got 'lots'"),
        ("burst=1.5", r"rate must be a number in \[0, 1\], got '1.5'"),
        ("burst=-0.1", r"rate must be a number in \[0, 1\]"),
        ("burst=nan", r"rate must be a number in \[0, 1\]"),
        ("burst", r"mix part 'burst' is not name=rate"),
        ("burst=0.1,,takeover=0.1", r"mix part '' is not name=rate"),
        ("burst=0.1,burst=0.2", r"scenario 'burst' given twice"),
    ],
)
def test_parse_mix_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


def test_mix_refuses_bad_rates_when_built_directly() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'normal'"):
        Mix({"normal": 0.1})
    with pytest.raises(ValueError, match=r"rate of burst must be a number in \[0, 1\]"):
        Mix({"burst": 2})
