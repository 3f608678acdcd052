from __future__ import annotations

import datetime
import random
import re
from collections import defaultdict
from itertools import islice, pairwise

import pytest
import pytz

from fraud_pipeline.payment import CARD_BINS, PAYMENT_TYPES, account_profile, decode, encode, generate, seoul_date_time
from fraud_pipeline.scenarios import (
    DEFAULT_MIX,
    FRAUD,
    HISTORY,
    HISTORY_DAYS,
    LEGIT,
    NO_SCENARIOS,
    SCENARIOS,
    Labelled,
    Mix,
    World,
    history,
    labelled_stream,
    parse_mix,
    plan_burst,
    plan_busy_shopper,
    plan_device_card_testing,
    plan_family_payee,
    plan_mule_fan_in,
    plan_new_payee_large,
    plan_shop_terminal,
    plan_small_then_large,
    plan_takeover,
    simulated_clock,
)

START = datetime.datetime(2024, 1, 1, tzinfo=pytz.utc)


def stream(mix: Mix, count: int, seed: int | None = 1, accounts: int = 1000, rate: float = 20.0,
           history_days: float = HISTORY_DAYS) -> list[Labelled]:
    """``count`` payments of the stream, the regulars' history (when the mix needs it) not counted."""
    items = labelled_stream(seed, accounts, mix, simulated_clock(START, rate), history_days)
    past = [] if history_days <= 0 or not mix.needs_history else list(islice(items, len(history_of(seed, accounts))))
    return past + list(islice(items, count))


def history_of(seed: int | None, accounts: int) -> list[Labelled]:
    return history(seed, World(seed, accounts), START)


def live(items: list[Labelled]) -> list[Labelled]:
    return [i for i in items if i.scenario != HISTORY]


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
    items = live(stream(DEFAULT_MIX, 20000))
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
    assert {i.scenario for i in items} == {"normal", HISTORY, *SCENARIOS}
    for item in items:
        assert decode(encode(item.payment)) == item.payment


def test_default_mix_is_a_few_percent_fraud() -> None:
    items = live(stream(DEFAULT_MIX, 30000, seed=3))
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
        ("brust=0.1", r"unknown scenario 'brust'; known: burst, small-then-large, large-to-stranger, takeover, device-card-testing, "
                      r"mule-fan-in, new-payee-large, above-baseline, big-spender, busy-shopper, family-payee, shop-terminal, "
                      r"known-payee-large, varied-spender"),
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


# --- entities ------------------------------------------------------------------------

MASKED = re.compile(r"\d{6}\*{6}\d{4}\Z")
NEW_SCENARIOS = Mix({
    "device-card-testing": 0.01, "mule-fan-in": 0.01, "new-payee-large": 0.01, "above-baseline": 0.01,
    "family-payee": 0.01, "shop-terminal": 0.01, "known-payee-large": 0.01, "varied-spender": 0.01,
})


def test_base_payments_carry_the_accounts_stable_entities() -> None:
    items = stream(NO_SCENARIOS, 5000, accounts=50)
    devices: dict[str, set[str]] = defaultdict(set)
    for item in items:
        p = item.payment
        assert p.account is not None and p.device is not None and p.ip is not None
        profile = account_profile(p.account)
        assert p.ip == profile.ip and p.device in profile.devices
        devices[p.account].add(p.device)
        if p.payment_type == "BITCOIN":
            assert p.card is None and p.merchant is None
        else:
            assert p.card == profile.card(p.payment_type)
            assert p.card is not None and MASKED.match(p.card) and p.card[:6] in CARD_BINS[p.payment_type]
            assert p.merchant is not None and p.merchant.startswith("merchant-")
    assert all(1 <= len(d) <= 2 for d in devices.values())
    assert any(len(d) == 2 for d in devices.values())
    assert len({account_profile(a).devices[0] for a in devices}) == len(devices)  # nobody else's device


def test_entities_leave_a_seeds_original_fields_unchanged() -> None:
    now = START
    plain = [generate(r, now) for r in [random.Random(4)] for _ in range(500)]
    rng, extra = random.Random(4), random.Random("other")
    rich = [generate(rng, now, 1000, extra) for _ in range(500)]
    assert [p.original_fields() for p in rich] == [p.original_fields() for p in plain]
    assert [(p.account, p.payment_id) for p in rich] == [(p.account, p.payment_id) for p in plain]
    assert all(p.device is None and p.card is None for p in plain)
    # and a mix of the older scenarios gives the same five fields, payment for payment
    mix = parse_mix("burst=0.01,takeover=0.01")
    first = stream(mix, 3000, seed=9)
    assert [i.payment.original_fields() for i in first] == [i.payment.original_fields() for i in stream(mix, 3000, seed=9)]
    assert all(i.payment.device is not None for i in first)


def test_fraudsters_pay_from_their_own_device() -> None:
    items = stream(parse_mix("burst=0.01,takeover=0.01"), 20000, accounts=10**6)
    for item in items:
        p = item.payment
        assert p.account is not None
        own = p.device in account_profile(p.account).devices
        if item.scenario == "burst" or (item.scenario == "takeover" and item.label == FRAUD):
            assert not own
        else:
            assert own


# --- the newer scenarios: labels and shapes ----------------------------------------------


_WORLD = World(1, 10**6)


def world() -> World:
    """A world of a million accounts (built once: its regulars take a moment)."""
    return _WORLD


def test_device_card_testing_one_device_many_accounts_fraud_from_the_4th() -> None:
    for seed in range(200):
        plan = plan_device_card_testing(random.Random(seed), "ACC00001", world())
        assert 8 <= len(plan) <= 15
        assert [p.label for _, p in plan] == [LEGIT] * 3 + [FRAUD] * (len(plan) - 3)
        accounts = [p.account for _, p in plan]
        assert accounts[0] == "ACC00001" and len(set(accounts)) == len(accounts)
        assert len({(p.device, p.ip, p.merchant) for _, p in plan}) == 1
        assert plan[0][1].device not in account_profile("ACC00001").devices
        offsets = [t for t, _ in plan]
        assert all(5 <= b - a <= 30 for a, b in pairwise(offsets)) and offsets[-1] <= 7 * 60
        assert all(1 <= p.amount <= 10 and p.payment_type in ("VISA", "MASTERCARD") for _, p in plan)


def test_mule_fan_in_many_payers_one_new_payee_within_an_hour() -> None:
    payees = set()
    for seed in range(200):
        plan = plan_mule_fan_in(random.Random(seed), "ACC00001", world())
        assert 8 <= len(plan) <= 15
        assert [p.label for _, p in plan] == [LEGIT] * 3 + [FRAUD] * (len(plan) - 3)
        assert len({p.account for _, p in plan}) == len(plan)
        (mule,) = {p.to for _, p in plan}
        assert re.fullmatch(r"mule-[0-9a-f]{8}", mule)
        payees.add(mule)
        assert plan[-1][0] < 3600
        assert all(20 <= p.amount <= 450 for _, p in plan)  # under the large-payment rules' 500
    assert len(payees) == 200


def test_new_payee_large_probe_legit_then_large_fraud_to_the_same_payee() -> None:
    for seed in range(200):
        plan = plan_new_payee_large(random.Random(seed), "ACC00001", world())
        (t0, probe), *large = plan
        assert probe.label == LEGIT and 1 <= probe.amount <= 10 and probe.to.startswith("payee-")
        assert 1 <= len(large) <= 2
        assert all(p.label == FRAUD and p.to == probe.to and 500 <= p.amount <= 3000 for _, p in large)
        assert 60 <= large[0][0] - t0 <= 600
        assert all(p.account == "ACC00001" for _, p in plan)


def test_legit_noise_of_households_and_shops() -> None:
    for seed in range(200):
        family = plan_family_payee(random.Random(seed), "ACC00001", world())
        assert all(p.label == LEGIT and p.amount < 500 for _, p in family)
        assert 2 <= len({p.account for _, p in family}) <= 3  # one device for at most 3 accounts
        assert len({(p.device, p.ip, p.to) for _, p in family}) == 1
        assert max(t for t, _ in family) <= 3000
        shop = plan_shop_terminal(random.Random(seed), "ACC00001", world())
        assert 6 <= len(shop) <= 20 and all(p.label == LEGIT for _, p in shop)
        assert len({p.account for _, p in shop}) == len(shop) and len({p.device for _, p in shop}) == 1
        offsets = [t for t, _ in shop]
        assert all(300 <= b - a <= 1200 for a, b in pairwise(offsets))  # at most 3 in any 10 minutes


def test_a_seed_gives_the_same_newer_scenarios_and_another_seed_others() -> None:
    first = stream(NEW_SCENARIOS, 3000, seed=5, accounts=2000)
    assert first == stream(NEW_SCENARIOS, 3000, seed=5, accounts=2000)
    other = stream(NEW_SCENARIOS, 3000, seed=6, accounts=2000)
    assert [i.payment for i in first] != [i.payment for i in other]
    assert {i.scenario for i in first} == {"normal", HISTORY, *NEW_SCENARIOS}


# --- regulars and their history -------------------------------------------------------------


def test_history_comes_first_stamped_in_the_weeks_before_the_stream() -> None:
    items = stream(NEW_SCENARIOS, 2000, accounts=2000)
    past = [i for i in items if i.scenario == HISTORY]
    assert past == items[: len(past)] and len(past) > 1000
    assert all(i.label == LEGIT for i in past)
    stamps = [i.payment.timestamp_ms or 0 for i in past]
    start_ms = int(START.timestamp() * 1000)
    assert stamps == sorted(stamps)
    assert start_ms - HISTORY_DAYS * 86_400_000 <= stamps[0] and stamps[-1] <= start_ms - 3_600_000
    # the payments after it are those of a stream without it
    without = stream(NEW_SCENARIOS, 2000, accounts=2000, history_days=0)
    assert items[len(past):] == without
    # a mix of no regulars' scenario has no history, whatever history_days says
    assert HISTORY not in {i.scenario for i in stream(parse_mix("burst=0.01"), 500)}


def test_above_baseline_is_a_steady_regular_far_above_its_own_history() -> None:
    items = stream(NEW_SCENARIOS, 20000, accounts=2000)
    amounts: dict[str, list[int]] = defaultdict(list)
    frauds = []
    for item in items:
        assert item.payment.account is not None
        if item.scenario == "above-baseline":
            frauds.append(item)
        amounts[item.payment.account].append(item.payment.amount)
    assert len(frauds) >= 15
    assert len({i.payment.account for i in frauds}) == len(frauds)  # each steady regular once
    for item in frauds:
        assert item.label == FRAUD
        account = item.payment.account
        assert account is not None and account.startswith("REG")
        before = amounts[account][:-1]
        assert amounts[account][-1] == item.payment.amount and len(before) >= 25
        assert max(before) <= 1.2 * min(before) and item.payment.amount >= 5 * max(before)


def test_known_payee_and_varied_spenders_are_regulars_with_history() -> None:
    items = stream(NEW_SCENARIOS, 20000, accounts=2000)
    paid: dict[tuple[str | None, str], int] = {}
    start_ms = int(START.timestamp() * 1000)
    for item in items:
        p = item.payment
        if item.scenario == "known-payee-large":
            assert item.label == LEGIT and p.amount >= 540
            assert start_ms - paid[(p.account, p.to)] > 86_400_000  # paid for days already
        if item.scenario == "varied-spender":
            assert item.label == LEGIT and 300 <= p.amount <= 1000
        paid.setdefault((p.account, p.to), p.timestamp_ms or 0)
    scenarios = {i.scenario for i in items}
    assert {"known-payee-large", "varied-spender"} <= scenarios
