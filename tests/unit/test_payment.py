from __future__ import annotations

import datetime
import json
import random

import pytest
import pytz

from fraud_pipeline.payment import (
    MAX_RECORD_BYTES,
    PAYMENT_TYPES,
    RECIPIENTS,
    InvalidPayment,
    Payment,
    decode,
    encode,
    generate,
    seoul_date_time,
)

NOW = datetime.datetime(2023, 1, 22, 2, 50, 50, tzinfo=pytz.utc)
VALID = {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "VISA", "AMOUNT": 42, "TO": "me"}


def test_date_and_time_are_in_seoul() -> None:
    assert seoul_date_time(NOW) == ("01/22/2023", "11:50:50")
    # 16:00 UTC is already the next day in Seoul (UTC+9)
    late = datetime.datetime(2023, 1, 22, 16, 0, 0, tzinfo=pytz.utc)
    assert seoul_date_time(late) == ("01/23/2023", "01:00:00")


def test_generated_payments_stay_in_the_original_ranges() -> None:
    rng = random.Random(3)
    payments = [generate(rng, NOW, accounts=50) for _ in range(2000)]
    assert {p.payment_type for p in payments} == set(PAYMENT_TYPES)
    assert {p.to for p in payments} == set(RECIPIENTS)
    assert min(p.amount for p in payments) == 0 and max(p.amount for p in payments) == 100
    assert len({p.account for p in payments}) == 50
    assert len({p.payment_id for p in payments}) == 2000
    assert all(p.timestamp_ms == 1674355850000 for p in payments)


def test_a_seed_gives_the_same_stream() -> None:
    first = [generate(random.Random(11), NOW) for _ in range(1)]
    again = [generate(random.Random(11), NOW) for _ in range(1)]
    other = [generate(random.Random(12), NOW) for _ in range(1)]
    assert first == again
    assert first != other


def test_seed_draws_type_amount_and_recipient_as_the_original_did() -> None:
    rng, original = random.Random(5), random.Random(5)
    payment = generate(rng, NOW)
    expected = (
        original.choice(["VISA", "MASTERCARD", "BITCOIN"]),
        original.randint(0, 100),
        original.choice(["me", "mom", "dad", "friend", "stranger"]),
    )
    assert (payment.payment_type, payment.amount, payment.to) == expected


def test_wire_format_keeps_the_original_five_fields_first() -> None:
    payment = generate(random.Random(1), NOW)
    data = json.loads(encode(payment))
    assert list(data)[:5] == ["DATE", "TIME", "PAYMENT_TYPE", "AMOUNT", "TO"]
    assert list(data)[5:] == ["PAYMENT_ID", "ACCOUNT", "TIMESTAMP_MS"]
    assert decode(encode(payment)) == payment


def test_five_original_fields_alone_are_a_payment() -> None:
    payment = decode(json.dumps(VALID).encode())
    assert payment == Payment("01/22/2023", "11:50:50", "VISA", 42, "me")
    assert encode(payment) == json.dumps(VALID).encode()


def _with(**changes: object) -> bytes:
    data = {**VALID, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty record"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"42", "not a JSON object"),
        (_with(AMOUNT=...), "missing field AMOUNT"),
        (_with(TO=...), "missing field TO"),
        (_with(AMOUNT="42"), "AMOUNT must be int"),
        (_with(AMOUNT=4.5), "AMOUNT must be int"),
        (_with(AMOUNT=True), "AMOUNT must be int"),
        (_with(AMOUNT=-1), "AMOUNT must be >= 0"),
        (_with(PAYMENT_TYPE="AMEX"), "unknown PAYMENT_TYPE"),
        (_with(PAYMENT_TYPE=7), "PAYMENT_TYPE must be str"),
        (_with(DATE="2023-01-22"), "DATE must be MM/DD/YYYY"),
        (_with(TIME="11:50"), "TIME must be HH:MM:SS"),
        (_with(TIMESTAMP_MS=-5), "TIMESTAMP_MS must be >= 0"),
        (_with(ACCOUNT=12), "ACCOUNT must be str"),
        (b"{" + b" " * MAX_RECORD_BYTES + b"}", "record too large"),
        (b"[" * 5000, "depth limit exceeded"),
        (b'{"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "VISA", "AMOUNT": 1, "TO": "\\ud800"}', "surrogate"),
        (_with(TO="me\n[VISA] payment to: fake - 1"), "control characters"),
    ],
)
def test_bad_records_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidPayment, match=reason):
        decode(raw)


def test_processors_may_read_unknown_payment_types() -> None:
    assert decode(_with(PAYMENT_TYPE="AMEX"), known_types_only=False).payment_type == "AMEX"
