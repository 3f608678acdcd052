"""Labelled payments: the tutorial's random traffic with fraud scenarios woven in.

Pure and seedable (no Kafka): ``labelled_stream`` yields each payment with a
label (``fraud`` or ``legit``) and the scenario it belongs to, for producers
that want ground truth and for the offline backtest.

Base traffic is ``payment.generate``'s: uniform type, AMOUNT 0-100, uniform
recipient, labelled legit, scenario ``normal``. After each base payment a
scenario starts with the probability the mix gives it; its payments are then
emitted at their scheduled times, in place of base payments, stamped with the
instant they are emitted.

Fraud scenarios:

- ``burst`` (card testing): one account, 8-12 card payments of AMOUNT 1-30,
  2-6 s apart;
- ``small-then-large`` (the Flink walkthrough's pattern): a probe of AMOUNT
  0-4, then 5-40 s later a card payment of AMOUNT 500-2000;
- ``large-to-stranger``: one card payment of AMOUNT 500-5000 to ``stranger``;
- ``takeover``: 1-3 ordinary card payments by the real owner, then 10-60 s
  later 1-3 BITCOIN payments of AMOUNT 200-1000 to ``stranger``.

Legit scenarios, the noise rules must not flag:

- ``big-spender``: one card payment of AMOUNT 150-1000 to me, mom, dad or friend;
- ``busy-shopper``: 3-4 card payments of ordinary amounts from one account within 60 s.

**Labels mark the payments a real-time detector should stop**, not every
payment of a fraud scenario. A detector decides each payment when it arrives
and cannot tell a burst's first payments from ordinary ones, so a burst's
first 5 payments are labelled legit and its 6th onwards fraud; the probe of
small-then-large and the owner's own payments before a takeover are legit too.
"""

from __future__ import annotations

import datetime
import heapq
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .payment import RECIPIENTS, Payment, generate, seoul_date_time

LABEL_HEADER = "fraud.label"
"""Record header with the payment's label; producers set it, the detector never reads it."""
SCENARIO_HEADER = "fraud.scenario"
"""Record header with the payment's scenario name."""

FRAUD = "fraud"
LEGIT = "legit"
LABELS = (FRAUD, LEGIT)
NORMAL = "normal"
"""The scenario of base traffic."""
FRAUD_SCENARIOS = ("burst", "small-then-large", "large-to-stranger", "takeover")
LEGIT_SCENARIOS = ("big-spender", "busy-shopper")
SCENARIOS = FRAUD_SCENARIOS + LEGIT_SCENARIOS
"""Scenarios a mix can start, in the order their starts are drawn."""

BURST_LEGIT_PREFIX = 5
"""A burst's first payments, labelled legit: no real-time detector can tell them from ordinary ones."""
CARDS = ("VISA", "MASTERCARD")
KNOWN_RECIPIENTS = tuple(to for to in RECIPIENTS if to != "stranger")
Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True, slots=True)
class Labelled:
    """A payment with its ground truth."""

    payment: Payment
    label: str
    """``fraud`` or ``legit``."""
    scenario: str
    """``normal`` for base traffic, else one of SCENARIOS."""


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
    "big-spender": 0.01,
    "busy-shopper": 0.005,
})
"""About 3 % of payments labelled fraud, about 6 % in scenarios."""
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


@dataclass(order=True)
class _Due:
    at: datetime.datetime
    seq: int
    planned: Planned = field(compare=False)


Plan = list[tuple[float, Planned]]
"""A scenario's payments: (seconds after its start, payment)."""


def _card(rng: random.Random) -> str:
    return rng.choice(CARDS)


def plan_burst(rng: random.Random, account: str) -> Plan:
    """Card testing: 8-12 small card payments 2-6 s apart; the 6th onwards are fraud."""
    plan: Plan = []
    offset = 0.0
    for i in range(rng.randint(8, 12)):
        if i:
            offset += rng.uniform(2, 6)
        label = LEGIT if i < BURST_LEGIT_PREFIX else FRAUD
        plan.append((offset, Planned(_card(rng), rng.randint(1, 30), rng.choice(RECIPIENTS), account, label, "burst")))
    return plan


def plan_small_then_large(rng: random.Random, account: str) -> Plan:
    """A probe of AMOUNT 0-4 (legit), then 5-40 s later AMOUNT 500-2000 (fraud)."""
    probe = Planned(_card(rng), rng.randint(0, 4), rng.choice(RECIPIENTS), account, LEGIT, "small-then-large")
    large = Planned(_card(rng), rng.randint(500, 2000), rng.choice(RECIPIENTS), account, FRAUD, "small-then-large")
    return [(0.0, probe), (rng.uniform(5, 40), large)]


def plan_large_to_stranger(rng: random.Random, account: str) -> Plan:
    """One card payment of AMOUNT 500-5000 to a stranger (fraud)."""
    return [(0.0, Planned(_card(rng), rng.randint(500, 5000), "stranger", account, FRAUD, "large-to-stranger"))]


def plan_takeover(rng: random.Random, account: str) -> Plan:
    """1-3 ordinary card payments (legit), then 10-60 s later 1-3 BITCOIN payments of 200-1000 to a stranger (fraud)."""
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
        plan.append((offset, Planned("BITCOIN", rng.randint(200, 1000), "stranger", account, FRAUD, "takeover")))
    return plan


def plan_big_spender(rng: random.Random, account: str) -> Plan:
    """One card payment of AMOUNT 150-1000 to someone known (legit)."""
    return [(0.0, Planned(_card(rng), rng.randint(150, 1000), rng.choice(KNOWN_RECIPIENTS), account, LEGIT, "big-spender"))]


def plan_busy_shopper(rng: random.Random, account: str) -> Plan:
    """3-4 card payments of ordinary amounts within 60 s (legit)."""
    count = rng.randint(3, 4)
    offsets = sorted(rng.uniform(0, 60) for _ in range(count - 1))
    return [
        (offset, Planned(_card(rng), rng.randint(0, 100), rng.choice(RECIPIENTS), account, LEGIT, "busy-shopper"))
        for offset in (0.0, *offsets)
    ]


PLANNERS: dict[str, Callable[[random.Random, str], Plan]] = {
    "burst": plan_burst,
    "small-then-large": plan_small_then_large,
    "large-to-stranger": plan_large_to_stranger,
    "takeover": plan_takeover,
    "big-spender": plan_big_spender,
    "busy-shopper": plan_busy_shopper,
}


def stamp(rng: random.Random, planned: Planned, now: datetime.datetime) -> Payment:
    """The planned payment as sent at ``now``, with a fresh id, like ``generate``'s."""
    date, time = seoul_date_time(now)
    return Payment(
        date=date,
        time=time,
        payment_type=planned.payment_type,
        amount=planned.amount,
        to=planned.to,
        payment_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        account=planned.account,
        timestamp_ms=int(now.timestamp() * 1000),
    )


def labelled_stream(seed: int | None, accounts: int, mix: Mix, clock: Clock) -> Iterator[Labelled]:
    """An endless stream of labelled payments; a seed and a clock give the same stream.

    Each step reads ``clock()`` once: a scenario payment due by then is
    emitted, else a base payment (``payment.generate``) is, after which each
    scenario of the mix starts with its probability.
    """
    if accounts < 1:
        raise ValueError(f"accounts must be >= 1, got {accounts}")
    rng = random.Random(seed)
    starts = tuple((rate, PLANNERS[name]) for name, rate in mix.items())
    due: list[_Due] = []
    seq = 0
    while True:
        now = clock()
        if due and due[0].at <= now:
            planned = heapq.heappop(due).planned
            yield Labelled(stamp(rng, planned, now), planned.label, planned.scenario)
            continue
        yield Labelled(generate(rng, now, accounts), LEGIT, NORMAL)
        for rate, planner in starts:
            if rng.random() < rate:
                account = f"ACC{rng.randrange(accounts):05d}"
                for offset, planned in planner(rng, account):
                    seq += 1
                    heapq.heappush(due, _Due(now + datetime.timedelta(seconds=offset), seq, planned))
