"""Labelled payments: the tutorial's random traffic with fraud scenarios woven in.

Pure and seedable (no Kafka): ``labelled_stream`` yields each payment with a
label (``fraud`` or ``legit``) and the scenario it belongs to, for producers
that want ground truth and for the offline backtest.

Base traffic is ``payment.generate``'s: uniform type, AMOUNT 0-100, uniform
recipient, labelled legit, scenario ``normal``. After each base payment a
scenario starts with the probability the mix gives it; its payments are then
emitted at their scheduled times, in place of base payments, stamped with the
instant they are emitted.

Entities. Every payment carries its account's CARD (card payments; each
account has one stable card per network, masked as ``411111******1234``),
a DEVICE (each account has one or two, the first mostly used), the
account's IP and, for card payments, a MERCHANT (``payment.account_profile``:
derived from the account id, the same on every run). Fraudsters pay from
their own device and IP. Those draws come from a second random stream
(``payment.entity_rng``): a seed gives the same type, amount, recipient,
account and id as it did before payments had entities, and a mix of the
older scenarios gives the same stream of those fields.

Fraud scenarios:

- ``burst`` (card testing): one account, 8-12 card payments of AMOUNT 1-30,
  2-6 s apart, from the fraudster's device;
- ``small-then-large`` (the Flink walkthrough's pattern): a probe of AMOUNT
  0-4, then 5-40 s later a card payment of AMOUNT 500-2000;
- ``large-to-stranger``: one card payment of AMOUNT 500-5000 to ``stranger``;
- ``takeover``: 1-3 ordinary card payments by the real owner, then 10-60 s
  later 1-3 BITCOIN payments of AMOUNT 200-1000 to ``stranger`` from the
  thief's device;
- ``device-card-testing``: one fraudster device tries stolen cards: card
  payments of AMOUNT 1-10 to ``me`` at one merchant from 8-15 different
  accounts, 5-30 s apart (at most 7 minutes in all);
- ``mule-fan-in``: 8-15 different accounts each pay one new payee (a mule,
  ``mule-xxxxxxxx``) AMOUNT 20-450 by card, 30-240 s apart (within an hour);
- ``new-payee-large``: an account pays a payee it never paid before
  (``payee-xxxxxxxx``) a probe of AMOUNT 1-10, then 1-10 minutes later a
  card payment of AMOUNT 500-3000 to it, and half the time a second one
  0.5-5 minutes after;
- ``above-baseline``: a steady regular (below) pays AMOUNT 300-1000 by card
  to family or a friend from a new device: 5 to 50 times its usual amount,
  though an amount a big spender pays every day. Each steady regular is
  used once (when all have been, the scenario no longer starts).

Legit scenarios, the noise rules must not flag:

- ``big-spender``: one card payment of AMOUNT 150-1000 to me, mom, dad or friend;
- ``busy-shopper``: 3-4 card payments of ordinary amounts from one account within 60 s;
- ``family-payee``: 2-3 accounts of one household (one shared device and IP)
  each pay a new shared payee AMOUNT 20-300 once or twice within 50 minutes;
- ``shop-terminal``: a shop's terminal (one device) takes card payments of
  AMOUNT 5-100 from 6-20 different accounts, 5-20 minutes apart;
- ``known-payee-large``: a bill payer (below) pays its usual payee 0.9-1.5
  times its usual bill (AMOUNT 540 or more);
- ``varied-spender``: a varied regular (below) pays AMOUNT 300-1000 to family
  or a friend.

Regulars and their history. ``above-baseline``, ``known-payee-large`` and
``varied-spender`` need what a 30-day window of a live system holds: weeks
of an account's payments. A backtest's stream covers minutes of simulated
time (50,000 payments at 20 a second: 42 minutes), so the history is
generated: accounts ``REG00000`` onwards (1 per 100 base accounts, at least
5, are steady; 1 per 500, at least 2, are varied, as many pay bills) paid
over the HISTORY_DAYS (28) days before the stream's first instant, and the
stream emits that history first, stamped in the past, in time order,
labelled legit with scenario ``history``. Every regular pays every 8-24 hours:
steady ones one stable amount (20-60, within 8 %), varied ones AMOUNT
5-2000 (log-uniform, 200-2000 four times in ten and the first time), bill
payers AMOUNT 10-100; bill payers also set up their own payee with a
payment of 1-10 on the first day, then pay it a bill of 600-2000 (within
15 %) 1.5-3 days later and every week after. The
history comes from its own random stream: the payments after it are those
of a stream without it. It is emitted only when the mix has one of those
three scenarios and ``history_days`` > 0, and is the same at every rate,
so the scenarios are as detectable at 20 as at 200 payments a second.

**Labels mark the payments a real-time detector should stop**, not every
payment of a fraud scenario. A detector decides each payment when it arrives
and cannot tell a burst's first payments from ordinary ones, so a burst's
first 5 payments are labelled legit and its 6th onwards fraud; the probe of
small-then-large and the owner's own payments before a takeover are legit
too. Likewise the first 3 accounts of a device's card testing and the first
3 payers of a mule are labelled legit (a household shares a device, a family
pays one payee: 3 of them are ordinary), their 4th onwards fraud; the probe
of new-payee-large is legit, its large payments fraud.
"""

from __future__ import annotations

import datetime
import heapq
import math
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .payment import (
    RECIPIENTS,
    Payment,
    entity_rng,
    generate,
    new_device,
    new_ip,
    pick_merchant,
    seoul_date_time,
    with_entities,
)

LABEL_HEADER = "fraud.label"
"""Record header with the payment's label; producers set it, the detector never reads it."""
SCENARIO_HEADER = "fraud.scenario"
"""Record header with the payment's scenario name."""

FRAUD = "fraud"
LEGIT = "legit"
LABELS = (FRAUD, LEGIT)
NORMAL = "normal"
"""The scenario of base traffic."""
HISTORY = "history"
"""The scenario of the regulars' generated history (legit, stamped before the stream's first instant)."""
FRAUD_SCENARIOS = (
    "burst", "small-then-large", "large-to-stranger", "takeover",
    "device-card-testing", "mule-fan-in", "new-payee-large", "above-baseline",
)
LEGIT_SCENARIOS = ("big-spender", "busy-shopper", "family-payee", "shop-terminal", "known-payee-large", "varied-spender")
SCENARIOS = FRAUD_SCENARIOS + LEGIT_SCENARIOS
"""Scenarios a mix can start, in the order their starts are drawn."""
REGULAR_SCENARIOS = ("above-baseline", "known-payee-large", "varied-spender")
"""Scenarios of regulars: they need the regulars' history (see the module's docstring)."""

BURST_LEGIT_PREFIX = 5
"""A burst's first payments, labelled legit: no real-time detector can tell them from ordinary ones."""
DEVICE_LEGIT_PREFIX = 3
"""The first accounts of a device's card testing, labelled legit: a household shares a device."""
MULE_LEGIT_PREFIX = 3
"""A mule's first payers, labelled legit: a family pays one payee."""
HISTORY_DAYS = 28.0
"""How far back the regulars' history goes: within a 30-day window, with room for its coarse oldest edge."""
CARDS = ("VISA", "MASTERCARD")
KNOWN_RECIPIENTS = tuple(to for to in RECIPIENTS if to != "stranger")
Clock = Callable[[], datetime.datetime]
_HOUR = 3600.0
_DAY = 24 * _HOUR


@dataclass(frozen=True, slots=True)
class Labelled:
    """A payment with its ground truth."""

    payment: Payment
    label: str
    """``fraud`` or ``legit``."""
    scenario: str
    """``normal`` for base traffic, ``history`` for the regulars' history, else one of SCENARIOS."""


class Mix(Mapping[str, float]):
    """Per scenario, the probability that a base payment starts it (frozen; absent scenarios have 0)."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Mapping[str, float] | None = None) -> None:
        rates = dict(rates or {})
        for name, rate in rates.items():
            _check_rate(name, rate)
        # Kept in SCENARIOS order: the order starts are drawn in, so equal mixes give equal streams.
        self._rates = {name: float(rates[name]) for name in SCENARIOS if rates.get(name)}

    def __getitem__(self, name: str) -> float:
        return self._rates[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rates)

    def __len__(self) -> int:
        return len(self._rates)

    def __hash__(self) -> int:
        return hash(tuple(self._rates.items()))

    def text(self) -> str:
        """The mix as ``parse_mix`` reads it (``none`` when empty)."""
        return ",".join(f"{name}={rate:g}" for name, rate in self._rates.items()) or "none"

    def __repr__(self) -> str:
        return f"Mix({self.text()!r})"

    @property
    def needs_history(self) -> bool:
        """Whether a scenario of the mix acts on regulars, whose history the stream then emits first."""
        return any(name in REGULAR_SCENARIOS for name in self._rates)


def _check_rate(name: str, rate: object) -> None:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"rate of {name} must be a number in [0, 1], got {rate!r}")


DEFAULT_MIX = Mix({
    "burst": 0.002,
    "small-then-large": 0.005,
    "large-to-stranger": 0.006,
    "takeover": 0.005,
    "device-card-testing": 0.0005,
    "mule-fan-in": 0.0004,
    "new-payee-large": 0.002,
    "above-baseline": 0.001,
    "big-spender": 0.01,
    "busy-shopper": 0.005,
    "family-payee": 0.001,
    "shop-terminal": 0.0005,
    "known-payee-large": 0.002,
    "varied-spender": 0.002,
})
"""About 4 % of payments labelled fraud, about 9 % in scenarios."""
NO_SCENARIOS = Mix()


def parse_mix(text: str) -> Mix:
    """``default``, ``none``, or ``name=rate,...`` (scenarios not listed do not occur).

    ValueError names the part at fault: an unknown scenario (listing the known
    ones), a rate that is not a number in [0, 1], a scenario given twice.
    """
    text = text.strip()
    if text == "default":
        return DEFAULT_MIX
    if text == "none":
        return NO_SCENARIOS
    rates: dict[str, float] = {}
    for part in text.split(","):
        name, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or not name:
            raise ValueError(f"mix part {part.strip()!r} is not name=rate (mix is 'default', 'none' or 'burst=0.004,takeover=0.003,...')")
        if name not in SCENARIOS:
            raise ValueError(f"mix part {part.strip()!r}: unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        if name in rates:
            raise ValueError(f"mix part {part.strip()!r}: scenario {name!r} given twice")
        try:
            rate = float(raw)
        except ValueError:
            rate = float("nan")
        if not 0 <= rate <= 1:  # also refuses nan
            raise ValueError(f"mix part {part.strip()!r}: rate must be a number in [0, 1], got {raw!r}")
        rates[name] = rate
    return Mix(rates)


def simulated_clock(start: datetime.datetime, rate: float) -> Clock:
    """A clock returning ``start``, then advancing 1/``rate`` seconds per call (``rate`` payments/s)."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if start.tzinfo is None:
        raise ValueError("start must be an aware datetime")
    calls = 0

    def now() -> datetime.datetime:
        nonlocal calls
        at = start + datetime.timedelta(seconds=calls / rate)
        calls += 1
        return at

    return now


@dataclass(frozen=True, slots=True)
class Planned:
    """A scenario payment waiting for its time: everything but the id and the time stamp."""

    payment_type: str
    amount: int
    to: str
    account: str
    label: str
    scenario: str
    device: str | None = None
    """None: one of the account's own devices."""
    ip: str | None = None
    """None: the account's IP."""
    merchant: str | None = None
    """None: drawn for a card payment (BITCOIN payments have none)."""


@dataclass(order=True)
class _Due:
    at: datetime.datetime
    seq: int
    planned: Planned = field(compare=False)


Plan = list[tuple[float, Planned]]
"""A scenario's payments: (seconds after its start, payment)."""


@dataclass(frozen=True, slots=True)
class Regular:
    """A regular account: its kind and what it usually pays."""

    account: str
    kind: str
    """``steady``, ``varied`` or ``bills``."""
    usual: int
    """Steady: its usual amount; bills: its usual bill; varied: 0."""
    payee: str | None = None
    """Bills: the payee its bills go to."""


class World:
    """Who scenarios act on: the base accounts, the regulars, and a second random stream for entities.

    The regulars are fixed by the number of base accounts (the module's
    docstring); the entity stream by the seed (``payment.entity_rng``).
    """

    def __init__(self, seed: int | None, accounts: int) -> None:
        self.accounts = accounts
        self.entities = entity_rng(seed)
        steady, varied = max(5, accounts // 100), max(2, accounts // 500)
        kinds = ["steady"] * steady + ["varied"] * varied + ["bills"] * varied
        self.regulars = tuple(_regular(f"REG{n:05d}", kind) for n, kind in enumerate(kinds))
        self.steady = tuple(r for r in self.regulars if r.kind == "steady")
        self.varied = tuple(r for r in self.regulars if r.kind == "varied")
        self.bill_payers = tuple(r for r in self.regulars if r.kind == "bills")
        fresh = list(self.steady)
        self.entities.shuffle(fresh)
        self._fresh_steady = fresh

    def take_steady(self) -> Regular | None:
        """A steady regular no scenario has used yet (None when none is left)."""
        return self._fresh_steady.pop() if self._fresh_steady else None

    def base_accounts(self, rng: random.Random, first: str, count: int) -> list[str]:
        """``count`` different base accounts (fewer if the pool is smaller), ``first`` first."""
        drawn = (f"ACC{n:05d}" for n in rng.sample(range(self.accounts), min(count, self.accounts)))
        return [first, *(a for a in drawn if a != first)][:count]

    def device(self) -> str:
        return new_device(self.entities)

    def ip(self) -> str:
        return new_ip(self.entities)

    def merchant(self) -> str:
        return pick_merchant(self.entities)

    def payee(self, prefix: str = "payee") -> str:
        """A payee nobody paid before, e.g. ``payee-0c1f5e2a``."""
        return f"{prefix}-{self.entities.getrandbits(32):08x}"


def _regular(account: str, kind: str) -> Regular:
    rng = random.Random(f"regular:{account}")
    if kind == "steady":
        return Regular(account, kind, rng.randint(20, 60))
    if kind == "bills":
        return Regular(account, kind, rng.randint(600, 2000), f"payee-{rng.getrandbits(32):08x}")
    return Regular(account, kind, 0)


def _card(rng: random.Random) -> str:
    return rng.choice(CARDS)


def plan_burst(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """Card testing: 8-12 small card payments 2-6 s apart; the 6th onwards are fraud."""
    device, ip = (world.device(), world.ip()) if world else (None, None)
    plan: Plan = []
    offset = 0.0
    for i in range(rng.randint(8, 12)):
        if i:
            offset += rng.uniform(2, 6)
        label = LEGIT if i < BURST_LEGIT_PREFIX else FRAUD
        plan.append((offset, Planned(_card(rng), rng.randint(1, 30), rng.choice(RECIPIENTS), account, label, "burst", device, ip)))
    return plan


def plan_small_then_large(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """A probe of AMOUNT 0-4 (legit), then 5-40 s later AMOUNT 500-2000 (fraud)."""
    probe = Planned(_card(rng), rng.randint(0, 4), rng.choice(RECIPIENTS), account, LEGIT, "small-then-large")
    large = Planned(_card(rng), rng.randint(500, 2000), rng.choice(RECIPIENTS), account, FRAUD, "small-then-large")
    return [(0.0, probe), (rng.uniform(5, 40), large)]


def plan_large_to_stranger(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """One card payment of AMOUNT 500-5000 to a stranger (fraud)."""
    return [(0.0, Planned(_card(rng), rng.randint(500, 5000), "stranger", account, FRAUD, "large-to-stranger"))]


def plan_takeover(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """1-3 ordinary card payments (legit), then 10-60 s later 1-3 BITCOIN payments of 200-1000 to a stranger (fraud)."""
    device, ip = (world.device(), world.ip()) if world else (None, None)
    plan: Plan = []
    offset = 0.0
    for i in range(rng.randint(1, 3)):
        if i:
            offset += rng.uniform(5, 30)
        plan.append((offset, Planned(_card(rng), rng.randint(0, 100), rng.choice(RECIPIENTS), account, LEGIT, "takeover")))
    offset += rng.uniform(10, 60)
    for i in range(rng.randint(1, 3)):
        if i:
            offset += rng.uniform(2, 10)
        plan.append((offset, Planned("BITCOIN", rng.randint(200, 1000), "stranger", account, FRAUD, "takeover", device, ip)))
    return plan


def plan_device_card_testing(rng: random.Random, account: str, world: World) -> Plan:
    """One device, 8-15 accounts' cards, AMOUNT 1-10 5-30 s apart; from the 4th account on, fraud."""
    device, ip, merchant = world.device(), world.ip(), world.merchant()
    plan: Plan = []
    offset = 0.0
    for i, victim in enumerate(world.base_accounts(rng, account, rng.randint(8, 15))):
        if i:
            offset += rng.uniform(5, 30)
        label = LEGIT if i < DEVICE_LEGIT_PREFIX else FRAUD
        plan.append((offset, Planned(_card(rng), rng.randint(1, 10), "me", victim, label, "device-card-testing", device, ip, merchant)))
    return plan


def plan_mule_fan_in(rng: random.Random, account: str, world: World) -> Plan:
    """8-15 accounts pay one new mule payee AMOUNT 20-450, 30-240 s apart; from the 4th payer on, fraud."""
    mule = world.payee("mule")
    plan: Plan = []
    offset = 0.0
    for i, payer in enumerate(world.base_accounts(rng, account, rng.randint(8, 15))):
        if i:
            offset += rng.uniform(30, 240)
        label = LEGIT if i < MULE_LEGIT_PREFIX else FRAUD
        plan.append((offset, Planned(_card(rng), rng.randint(20, 450), mule, payer, label, "mule-fan-in")))
    return plan


def plan_new_payee_large(rng: random.Random, account: str, world: World) -> Plan:
    """A probe of AMOUNT 1-10 to a new payee (legit), 1-10 min later 500-3000 to it (fraud), half the time twice."""
    payee = world.payee()
    plan: Plan = [(0.0, Planned(_card(rng), rng.randint(1, 10), payee, account, LEGIT, "new-payee-large"))]
    offset = rng.uniform(60, 600)
    for _ in range(rng.choice((1, 2))):
        plan.append((offset, Planned(_card(rng), rng.randint(500, 3000), payee, account, FRAUD, "new-payee-large")))
        offset += rng.uniform(30, 300)
    return plan


def plan_above_baseline(rng: random.Random, account: str, world: World) -> Plan:
    """A steady regular, not used before, pays AMOUNT 300-1000 from a new device (fraud)."""
    regular = world.take_steady()
    if regular is None:
        return []
    planned = Planned(_card(rng), rng.randint(300, 1000), rng.choice(KNOWN_RECIPIENTS), regular.account, FRAUD,
                      "above-baseline", world.device(), world.ip())
    return [(0.0, planned)]


def plan_big_spender(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """One card payment of AMOUNT 150-1000 to someone known (legit)."""
    return [(0.0, Planned(_card(rng), rng.randint(150, 1000), rng.choice(KNOWN_RECIPIENTS), account, LEGIT, "big-spender"))]


def plan_busy_shopper(rng: random.Random, account: str, world: World | None = None) -> Plan:
    """3-4 card payments of ordinary amounts within 60 s (legit)."""
    count = rng.randint(3, 4)
    offsets = sorted(rng.uniform(0, 60) for _ in range(count - 1))
    return [
        (offset, Planned(_card(rng), rng.randint(0, 100), rng.choice(RECIPIENTS), account, LEGIT, "busy-shopper"))
        for offset in (0.0, *offsets)
    ]


def plan_family_payee(rng: random.Random, account: str, world: World) -> Plan:
    """2-3 accounts sharing a device and IP each pay one new payee AMOUNT 20-300, once or twice, within 50 min (legit)."""
    device, ip, payee = world.device(), world.ip(), world.payee()
    plan: Plan = []
    for member in world.base_accounts(rng, account, rng.randint(2, 3)):
        for _ in range(rng.choice((1, 2))):
            plan.append((rng.uniform(0, 3000), Planned(_card(rng), rng.randint(20, 300), payee, member, LEGIT, "family-payee",
                                                       device, ip)))
    return sorted(plan, key=lambda item: item[0])


def plan_shop_terminal(rng: random.Random, account: str, world: World) -> Plan:
    """A shop's terminal: 6-20 accounts pay AMOUNT 5-100 by card, 5-20 min apart (legit)."""
    device, ip, merchant = world.payee("term"), world.ip(), world.merchant()
    plan: Plan = []
    offset = 0.0
    for i, customer in enumerate(world.base_accounts(rng, account, rng.randint(6, 20))):
        if i:
            offset += rng.uniform(300, 1200)
        plan.append((offset, Planned(_card(rng), rng.randint(5, 100), "me", customer, LEGIT, "shop-terminal", device, ip, merchant)))
    return plan


def plan_known_payee_large(rng: random.Random, account: str, world: World) -> Plan:
    """A bill payer pays its usual payee 0.9-1.5 times its usual bill (legit)."""
    payer = rng.choice(world.bill_payers)
    assert payer.payee is not None
    amount = round(payer.usual * rng.uniform(0.9, 1.5))
    return [(0.0, Planned(_card(rng), amount, payer.payee, payer.account, LEGIT, "known-payee-large"))]


def plan_varied_spender(rng: random.Random, account: str, world: World) -> Plan:
    """A varied regular pays AMOUNT 300-1000 to family or a friend (legit)."""
    spender = rng.choice(world.varied)
    return [(0.0, Planned(_card(rng), rng.randint(300, 1000), rng.choice(KNOWN_RECIPIENTS), spender.account, LEGIT,
                          "varied-spender"))]


Planner = Callable[[random.Random, str, World], Plan]
PLANNERS: dict[str, Planner] = {
    "burst": plan_burst,
    "small-then-large": plan_small_then_large,
    "large-to-stranger": plan_large_to_stranger,
    "takeover": plan_takeover,
    "device-card-testing": plan_device_card_testing,
    "mule-fan-in": plan_mule_fan_in,
    "new-payee-large": plan_new_payee_large,
    "above-baseline": plan_above_baseline,
    "big-spender": plan_big_spender,
    "busy-shopper": plan_busy_shopper,
    "family-payee": plan_family_payee,
    "shop-terminal": plan_shop_terminal,
    "known-payee-large": plan_known_payee_large,
    "varied-spender": plan_varied_spender,
}


def stamp(rng: random.Random, planned: Planned, now: datetime.datetime, entities: random.Random | None = None) -> Payment:
    """The planned payment as sent at ``now``, with a fresh id, like ``generate``'s (and its entities, given ``entities``)."""
    date, time = seoul_date_time(now)
    payment = Payment(
        date=date,
        time=time,
        payment_type=planned.payment_type,
        amount=planned.amount,
        to=planned.to,
        payment_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        account=planned.account,
        timestamp_ms=int(now.timestamp() * 1000),
    )
    if entities is None:
        return payment
    return with_entities(payment, entities, planned.device, planned.ip, planned.merchant)


def _history_plan(rng: random.Random, regular: Regular, days: float) -> Plan:
    """A regular's payments over ``days`` (offsets from the history's start), ending an hour before it ends."""
    end = days * _DAY - _HOUR
    plan: Plan = []
    at = rng.uniform(0, _DAY)
    while at < end:
        if regular.kind == "steady":
            amount = round(regular.usual * rng.uniform(0.92, 1.08))
        elif regular.kind == "varied":  # large ones from the first on: its amounts have always varied widely
            large = not plan or rng.random() < 0.4
            amount = int(math.exp(rng.uniform(math.log(200), math.log(2000)) if large else rng.uniform(math.log(5), math.log(200))))
        else:
            amount = rng.randint(10, 100)
        plan.append((at, Planned(_card(rng), amount, rng.choice(KNOWN_RECIPIENTS), regular.account, LEGIT, HISTORY)))
        at += rng.uniform(8 * _HOUR, 24 * _HOUR)
    if regular.payee is not None:
        # The payee was set up with a small confirming payment, the first bill followed days later
        # (before the account has 10 other payments), then one a week.
        at = rng.uniform(0, 0.5 * _DAY)
        plan.append((at, Planned(_card(rng), rng.randint(1, 10), regular.payee, regular.account, LEGIT, HISTORY)))
        at += rng.uniform(1.5 * _DAY, 3 * _DAY)
        while at < end:
            amount = round(regular.usual * rng.uniform(0.85, 1.15))
            plan.append((at, Planned(_card(rng), amount, regular.payee, regular.account, LEGIT, HISTORY)))
            at += rng.uniform(6.5 * _DAY, 7.5 * _DAY)
    return plan


def history(seed: int | None, world: World, until: datetime.datetime, days: float = HISTORY_DAYS) -> list[Labelled]:
    """The regulars' payments over the ``days`` before ``until``, in time order (legit, scenario ``history``).

    Drawn from its own random stream: a stream with the history emits the
    same payments after it as one without.
    """
    rng = entity_rng(seed, "history")
    entities = entity_rng(seed, "history-entities")
    start = until - datetime.timedelta(days=days)
    due = sorted(
        ((offset, n, planned) for regular in world.regulars for n, (offset, planned) in enumerate(_history_plan(rng, regular, days))),
        key=lambda item: item[0],
    )
    return [
        Labelled(stamp(rng, planned, start + datetime.timedelta(seconds=offset), entities), LEGIT, HISTORY)
        for offset, _, planned in due
    ]


def labelled_stream(
    seed: int | None, accounts: int, mix: Mix, clock: Clock, history_days: float = HISTORY_DAYS
) -> Iterator[Labelled]:
    """An endless stream of labelled payments; a seed and a clock give the same stream.

    Each step reads ``clock()`` once: a scenario payment due by then is
    emitted, else a base payment (``payment.generate``) is, after which each
    scenario of the mix starts with its probability. When the mix has a
    scenario of regulars (REGULAR_SCENARIOS) and ``history_days`` > 0, the
    regulars' history over the ``history_days`` before the first instant
    comes first.
    """
    if accounts < 1:
        raise ValueError(f"accounts must be >= 1, got {accounts}")
    rng = random.Random(seed)
    world = World(seed, accounts)
    entities = world.entities
    starts = tuple((rate, PLANNERS[name]) for name, rate in mix.items())
    due: list[_Due] = []
    seq = 0
    first = True
    while True:
        now = clock()
        if first:
            first = False
            if history_days > 0 and mix.needs_history:
                yield from history(seed, world, now, history_days)
        if due and due[0].at <= now:
            planned = heapq.heappop(due).planned
            yield Labelled(stamp(rng, planned, now, entities), planned.label, planned.scenario)
            continue
        yield Labelled(generate(rng, now, accounts, entities), LEGIT, NORMAL)
        for rate, planner in starts:
            if rng.random() < rate:
                account = f"ACC{rng.randrange(accounts):05d}"
                for offset, planned in planner(rng, account, world):
                    seq += 1
                    heapq.heappush(due, _Due(now + datetime.timedelta(seconds=offset), seq, planned))
