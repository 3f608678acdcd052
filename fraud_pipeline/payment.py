"""The payment record: its wire format, how to make one, and how to read one safely.

On the wire a payment is the original tutorial's JSON object::

    {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "VISA", "AMOUNT": 42, "TO": "me"}

with optional fields after those five: ``PAYMENT_ID`` (unique id),
``ACCOUNT`` (the sender, also the record key), ``TIMESTAMP_MS`` (event
time, epoch milliseconds), the entities a payment can be grouped by besides
its account (ENTITY_FIELDS: ``CARD``, masked as ``411111******1234``,
``DEVICE``, ``IP``, ``MERCHANT``) and, on routed payments only, ``DECISION``
(the detector's score and the rules that fired). The original scripts read only
the five original fields, so they read our messages; we accept messages that
have only those five.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytz

from .frozen import builder

PAYMENT_TYPES = ("VISA", "MASTERCARD", "BITCOIN")
RECIPIENTS = ("me", "mom", "dad", "friend", "stranger")
SEOUL = pytz.timezone("Asia/Seoul")
MAX_RECORD_BYTES = 64 * 1024
"""A payment is ~200 bytes; anything far larger is not one."""
MAX_AMOUNT = 10**15
"""Larger amounts are refused: no payment is that large, and rules compare amounts as floats."""
MAX_TIMESTAMP_MS = 10**14
"""About the year 5138: a larger TIMESTAMP_MS is not a time."""
ENTITY_FIELDS = ("CARD", "DEVICE", "IP", "MERCHANT")
"""Optional fields naming who or what else a payment involves: rules can group payments by them."""
MAX_CLOCK_SKEW_MS = 60_000
"""How far ahead of its record's timestamp (and of the clock) a payment's TIMESTAMP_MS is trusted."""

_DATE = re.compile(r"\d{2}/\d{2}/\d{4}\Z")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Payment:
    """One payment, as the producer sends it and the detector reads it."""

    date: str
    """DATE: day of the payment in Asia/Seoul, ``%m/%d/%Y``."""
    time: str
    """TIME: time of day in Asia/Seoul, ``%H:%M:%S``."""
    payment_type: str
    """PAYMENT_TYPE: VISA, MASTERCARD or BITCOIN."""
    amount: int
    """AMOUNT: a non-negative integer."""
    to: str
    """TO: the recipient (me, mom, dad, friend, stranger)."""
    payment_id: str | None = None
    """PAYMENT_ID: unique id of the payment; absent in the original's messages."""
    account: str | None = None
    """ACCOUNT: sender account, also the record key; absent in the original's messages."""
    timestamp_ms: int | None = None
    """TIMESTAMP_MS: event time in epoch milliseconds; absent in the original's messages."""
    card: str | None = None
    """CARD: the card paid with, masked (first six and last four digits); optional."""
    device: str | None = None
    """DEVICE: id of the device the payment was made from; optional."""
    ip: str | None = None
    """IP: the address the payment was made from; optional."""
    merchant: str | None = None
    """MERCHANT: the merchant paid, for card payments; optional."""
    decision: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """DECISION: the detector's decision, on routed payments only (see fraud_pipeline.rules.engine.Decision)."""

    def original_fields(self) -> dict[str, Any]:
        """The five fields of the original tutorial, in its order (what it printed)."""
        return {
            "DATE": self.date,
            "TIME": self.time,
            "PAYMENT_TYPE": self.payment_type,
            "AMOUNT": self.amount,
            "TO": self.to,
        }

    def to_dict(self) -> dict[str, Any]:
        """The wire object: the original five fields first, then the optional ones present."""
        data = self.original_fields()
        if self.payment_id is not None:
            data["PAYMENT_ID"] = self.payment_id
        if self.account is not None:
            data["ACCOUNT"] = self.account
        if self.timestamp_ms is not None:
            data["TIMESTAMP_MS"] = self.timestamp_ms
        for name, value in (("CARD", self.card), ("DEVICE", self.device), ("IP", self.ip), ("MERCHANT", self.merchant)):
            if value is not None:
                data[name] = value
        if self.decision is not None:
            data["DECISION"] = self.decision
        return data


_payment = builder(Payment)
"""Payment from all 13 fields, in order: what decode builds for every record."""


def encode(payment: Payment) -> bytes:
    """Serialize as the original did: ``json.dumps(...).encode("utf-8")``."""
    return json.dumps(payment.to_dict()).encode("utf-8")


def with_field(raw: bytes, name: str, value_json: bytes) -> bytes:
    """A decoded record's JSON object with one more field appended, the rest byte for byte.

    ``raw`` must be a value ``decode`` accepted (so it ends with ``}``).
    """
    body = raw.rstrip()
    return body[:-1] + b', "' + name.encode() + b'": ' + value_json + b"}"


class InvalidPayment(ValueError):
    """A record that is not a readable payment; the message says why."""


def _require(data: dict[str, Any], name: str, kind: type, escaped: bool = True) -> Any:
    """``data[name]``, checked to be of ``kind``; ``escaped``: the raw JSON had escapes, so text must be checked."""
    if name not in data:
        raise InvalidPayment(f"missing field {name}")
    value = data[name]
    # bool is an int in Python, never an amount or a timestamp
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidPayment(f"{name} must be {kind.__name__}, got {type(value).__name__} {_short(value)}")
    # Text is printed by the processors: no control characters, nothing stdout cannot encode.
    # JSON text holds neither unless written as an escape (the parser refuses them raw).
    if escaped and isinstance(value, str) and (_CONTROL.search(value) or not _encodable(value)):
        raise InvalidPayment(f"{name} has control characters or unpaired surrogates: {_short(value)}")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional(data: dict[str, Any], name: str, kind: type, escaped: bool = True) -> Any:
    if data.get(name) is None:
        return None
    return _require(data, name, kind, escaped)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def decode(raw: bytes | None, *, known_types_only: bool = True, max_bytes: int = MAX_RECORD_BYTES) -> Payment:
    """Read one record value as a Payment, or raise InvalidPayment with the reason.

    ``known_types_only`` refuses a PAYMENT_TYPE other than VISA, MASTERCARD and
    BITCOIN (the detector's view); the legit processor reads any type so that it
    can print the original's "unable to process" line for it.
    """
    if raw is None:
        raise InvalidPayment("empty record (no value)")
    if len(raw) > max_bytes:
        raise InvalidPayment(f"record too large: {len(raw)} bytes > {max_bytes}")
    try:
        data = orjson.loads(raw)  # about 4 times as fast as json.loads; refuses what it does, invalid UTF-8 too
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidPayment(f"not UTF-8: {bad.reason} at byte {bad.start}") from None
        raise InvalidPayment(f"not JSON: {exc}") from None
    escaped = b"\\" in raw
    if type(data) is dict and not escaped:
        # The common case in one pass; anything it does not accept is decided (and explained) below.
        get = data.get
        date, time, payment_type, amount, to = get("DATE"), get("TIME"), get("PAYMENT_TYPE"), get("AMOUNT"), get("TO")
        payment_id, account, timestamp_ms = get("PAYMENT_ID"), get("ACCOUNT"), get("TIMESTAMP_MS")
        card, device, ip, merchant = get("CARD"), get("DEVICE"), get("IP"), get("MERCHANT")
        if (
            type(date) is str and type(time) is str and type(payment_type) is str and type(amount) is int
            and type(to) is str and (date in _dates_seen or _seen(_dates_seen, _DATE, date))
            and (time in _times_seen or _seen(_times_seen, _TIME, time))
            and (payment_type in PAYMENT_TYPES or not known_types_only) and 0 <= amount <= MAX_AMOUNT
            and (payment_id is None or type(payment_id) is str) and (account is None or type(account) is str)
            and (timestamp_ms is None or (type(timestamp_ms) is int and 0 <= timestamp_ms <= MAX_TIMESTAMP_MS))
            and (card is None or type(card) is str) and (device is None or type(device) is str)
            and (ip is None or type(ip) is str) and (merchant is None or type(merchant) is str)
        ):
            decision = get("DECISION")
            return _payment(date, time, payment_type, amount, to, payment_id, account, timestamp_ms, card, device, ip, merchant,
                            decision if type(decision) is dict else None)
    return _checked(data, escaped, known_types_only)


_dates_seen: set[str] = set()
_times_seen: set[str] = set()
"""DATE and TIME values that matched their pattern already: a set look-up instead of a match per payment."""
_SEEN_MAX = 100_000
"""Values remembered per set, at most (a day has 86,400 times); past it the set starts again."""


def _seen(seen: set[str], pattern: re.Pattern[str], text: str) -> bool:
    """Whether ``text`` matches ``pattern``; remembered in ``seen`` if it does."""
    if not pattern.match(text):
        return False
    if len(seen) >= _SEEN_MAX:
        seen.clear()
    seen.add(text)
    return True


def _checked(data: Any, escaped: bool, known_types_only: bool) -> Payment:
    """decode's field by field path: the payment, or InvalidPayment naming the first fault."""
    if not isinstance(data, dict):
        raise InvalidPayment(f"not a JSON object: {type(data).__name__}")
    date = _require(data, "DATE", str, escaped)
    if not _DATE.match(date):
        raise InvalidPayment(f"DATE must be MM/DD/YYYY, got {_short(date)}")
    time = _require(data, "TIME", str, escaped)
    if not _TIME.match(time):
        raise InvalidPayment(f"TIME must be HH:MM:SS, got {_short(time)}")
    payment_type = _require(data, "PAYMENT_TYPE", str, escaped)
    if known_types_only and payment_type not in PAYMENT_TYPES:
        raise InvalidPayment(f"unknown PAYMENT_TYPE {_short(payment_type)}")
    amount = _require(data, "AMOUNT", int, escaped)
    if amount < 0:
        raise InvalidPayment(f"AMOUNT must be >= 0, got {_short(amount)}")
    if amount > MAX_AMOUNT:
        raise InvalidPayment(f"AMOUNT must be <= {MAX_AMOUNT}, got {_short(amount)}")
    to = _require(data, "TO", str, escaped)
    timestamp_ms = _optional(data, "TIMESTAMP_MS", int, escaped)
    if timestamp_ms is not None and timestamp_ms < 0:
        raise InvalidPayment(f"TIMESTAMP_MS must be >= 0, got {_short(timestamp_ms)}")
    if timestamp_ms is not None and timestamp_ms > MAX_TIMESTAMP_MS:
        raise InvalidPayment(f"TIMESTAMP_MS must be <= {MAX_TIMESTAMP_MS}, got {_short(timestamp_ms)}")
    return Payment(
        date=date,
        time=time,
        payment_type=payment_type,
        amount=amount,
        to=to,
        payment_id=_optional(data, "PAYMENT_ID", str, escaped),
        account=_optional(data, "ACCOUNT", str, escaped),
        timestamp_ms=timestamp_ms,
        card=_optional(data, "CARD", str, escaped),
        device=_optional(data, "DEVICE", str, escaped),
        ip=_optional(data, "IP", str, escaped),
        merchant=_optional(data, "MERCHANT", str, escaped),
        decision=decision if isinstance(decision := data.get("DECISION"), dict) else None,
    )


def event_time(payment: Payment, record_timestamp: int, now_ms: int | None = None) -> int:
    """When a payment happened: its TIMESTAMP_MS (else its record's timestamp), bounded.

    A TIMESTAMP_MS more than MAX_CLOCK_SKEW_MS ahead of the record's timestamp,
    or of ``now_ms`` when given, is taken as that bound: one payment stamped in
    the far future must not move its partition's event time.
    """
    at = record_timestamp if payment.timestamp_ms is None else payment.timestamp_ms
    if record_timestamp > 0:
        at = min(at, record_timestamp + MAX_CLOCK_SKEW_MS)
    if now_ms is not None:
        at = min(at, now_ms + MAX_CLOCK_SKEW_MS)
    return max(at, 0)


def seoul_date_time(now: datetime.datetime) -> tuple[str, str]:
    """DATE and TIME of an aware instant in Asia/Seoul, formatted as the original."""
    local = now.astimezone(SEOUL)
    return local.strftime("%m/%d/%Y"), local.strftime("%H:%M:%S")


@dataclass(frozen=True, slots=True)
class AccountProfile:
    """An account's stable entities: one card per network (masked), one or two devices, an IP."""

    cards: dict[str, str]
    """Per card PAYMENT_TYPE (VISA, MASTERCARD), the account's card, masked (``411111******1234``)."""
    devices: tuple[str, ...]
    """One or two device ids; the first is the one mostly used."""
    ip: str

    def card(self, payment_type: str) -> str | None:
        """The card a payment of this type is made with (None for BITCOIN)."""
        return self.cards.get(payment_type)


CARD_BINS = {"VISA": ("411111", "424242", "453201", "476173"), "MASTERCARD": ("510510", "542418", "555555", "222300")}
"""Issuer numbers (the first six digits) the generated cards start with, per network."""
SECOND_DEVICE_SHARE = 0.25
"""How often an account with two devices pays from its second one."""
MERCHANTS = tuple(f"merchant-{n:04d}" for n in range(1, 501))
"""The merchants card payments go to; the first are the most popular (weights 1/rank)."""
_MERCHANT_WEIGHTS = tuple(itertools.accumulate(1 / rank for rank in range(1, len(MERCHANTS) + 1)))


def mask_card(bin6: str, last4: str) -> str:
    """A card number as payments carry it: the first six and the last four digits."""
    return f"{bin6}******{last4}"


def new_device(rng: random.Random) -> str:
    """A fresh device id, e.g. ``dev-3f09a1c2``."""
    return f"dev-{rng.getrandbits(32):08x}"


def new_ip(rng: random.Random) -> str:
    """A fresh public-looking IPv4 address."""
    first = rng.choice((23, 31, 46, 62, 77, 81, 91, 109, 151, 176, 185, 211))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def pick_merchant(rng: random.Random) -> str:
    """A merchant, the popular ones more often (one draw)."""
    return rng.choices(MERCHANTS, cum_weights=_MERCHANT_WEIGHTS)[0]


@functools.lru_cache(maxsize=1 << 18)
def account_profile(account: str) -> AccountProfile:
    """The account's stable card, devices and IP: the same for an account on every run, whatever the seed.

    Derived from the account id alone (a string-seeded Random, which does not
    depend on PYTHONHASHSEED), so no stream draws are spent on it.
    """
    rng = random.Random(f"profile:{account}")
    cards = {kind: mask_card(rng.choice(bins), f"{rng.randrange(10_000):04d}") for kind, bins in CARD_BINS.items()}
    devices = tuple(new_device(rng) for _ in range(1 if rng.random() < 0.6 else 2))
    return AccountProfile(cards, devices, new_ip(rng))


def entity_rng(seed: int | None, purpose: str = "entities") -> random.Random:
    """A second random stream for a seed: draws from it leave the main stream's payments unchanged."""
    return random.Random(None if seed is None else f"{purpose}:{seed}")


def generate(
    rng: random.Random, now: datetime.datetime, accounts: int = 1000, entities: random.Random | None = None
) -> Payment:
    """One random payment at ``now`` (an aware datetime).

    The draws for type, amount and recipient come first and in the original's
    order, so a seed gives the same payments the original's choices would;
    then the account and the id. With ``entities`` (a second stream, see
    ``entity_rng``), the payment also carries the account's CARD (card
    payments), DEVICE and IP, and a MERCHANT (card payments): those draws come
    from ``entities`` only, so a seed's type, amount, recipient, account and id
    are the same with and without them.
    """
    payment_type = rng.choice(PAYMENT_TYPES)
    amount = rng.randint(0, 100)
    to = rng.choice(RECIPIENTS)
    account = f"ACC{rng.randrange(accounts):05d}"
    payment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    date, time = seoul_date_time(now)
    payment = Payment(
        date=date,
        time=time,
        payment_type=payment_type,
        amount=amount,
        to=to,
        payment_id=payment_id,
        account=account,
        timestamp_ms=int(now.timestamp() * 1000),
    )
    if entities is None:
        return payment
    return with_entities(payment, entities)


def with_entities(
    payment: Payment, entities: random.Random, device: str | None = None, ip: str | None = None, merchant: str | None = None
) -> Payment:
    """The payment with its account's CARD, a DEVICE and IP (the account's unless given) and, for cards, a MERCHANT."""
    assert payment.account is not None
    profile = account_profile(payment.account)
    card = profile.card(payment.payment_type)
    if device is None:
        device = profile.devices[1] if len(profile.devices) > 1 and entities.random() < SECOND_DEVICE_SHARE else profile.devices[0]
    if card is not None and merchant is None:
        merchant = pick_merchant(entities)
    return dataclasses.replace(
        payment, card=card, device=device, ip=ip or profile.ip, merchant=merchant if card is not None else None
    )


def payment_stream(seed: int | None, accounts: int = 1000, entities: bool = True) -> Iterator[Payment]:
    """An endless stream of payments stamped with the current time; seeded when ``seed`` is set.

    ``entities``: payments carry CARD, DEVICE, IP and MERCHANT (drawn from a
    second stream, so the rest of each payment is the same either way).
    """
    rng = random.Random(seed)
    extra = entity_rng(seed) if entities else None
    while True:
        yield generate(rng, datetime.datetime.now(pytz.utc), accounts, extra)


def is_text(value: Any) -> bool:
    """A str that is valid UTF-8: no lone surrogate, which JSON lets through and Kafka's encoders refuse."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
