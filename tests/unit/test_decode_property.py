"""Property: decoding never raises anything but InvalidPayment, whatever the bytes."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_pipeline.payment import MAX_RECORD_BYTES, PAYMENT_TYPES, InvalidPayment, Payment, _checked, decode

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from([*PAYMENT_TYPES, "01/22/2023", "11:50:50", "me", "stranger"]),
    st.lists(st.integers(), max_size=2),
)
FIELDS = ["DATE", "TIME", "PAYMENT_TYPE", "AMOUNT", "TO", "PAYMENT_ID", "ACCOUNT", "TIMESTAMP_MS"]
PAYMENT_LIKE = st.dictionaries(st.sampled_from([*FIELDS, "EXTRA"]), FIELD_VALUES, max_size=len(FIELDS) + 1)


def verdict(raw: bytes | None) -> Payment | str:
    """A Payment, or the reason it is dead-lettered; anything else raised fails the test."""
    try:
        return decode(raw)
    except InvalidPayment as exc:
        reason = str(exc)
        assert reason, "a dead-letter verdict needs a reason"
        return reason


def check_valid(payment: Payment) -> None:
    assert payment.payment_type in PAYMENT_TYPES
    assert isinstance(payment.amount, int) and not isinstance(payment.amount, bool) and payment.amount >= 0
    assert isinstance(payment.to, str)
    assert len(payment.date) == 10 and len(payment.time) == 8


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    result = verdict(raw)
    if isinstance(result, Payment):
        check_valid(result)


@settings(max_examples=400)
@given(JSON_VALUES)
def test_arbitrary_json(value: Any) -> None:
    result = verdict(json.dumps(value).encode())
    if isinstance(result, Payment):
        check_valid(result)


@settings(max_examples=600)
@given(PAYMENT_LIKE)
def test_payment_shaped_objects(data: dict[str, Any]) -> None:
    raw = json.dumps(data, allow_nan=True).encode()
    result = verdict(raw)
    if isinstance(result, Payment):
        check_valid(result)
        # what was accepted round-trips to the same fields
        assert {k: v for k, v in result.to_dict().items()} == {k: data[k] for k in result.to_dict()}


@given(st.integers(min_value=MAX_RECORD_BYTES + 1, max_value=MAX_RECORD_BYTES * 4))
@settings(max_examples=5)
def test_oversized_records(size: int) -> None:
    assert verdict(b" " * size) == f"record too large: {size} bytes > {MAX_RECORD_BYTES}"


def test_a_valid_payment_is_accepted() -> None:
    # guards the properties above against a decoder that refuses everything
    good = {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "VISA", "AMOUNT": 1, "TO": "me"}
    assert isinstance(verdict(json.dumps(good).encode()), Payment)


@settings(max_examples=800)
@given(PAYMENT_LIKE, st.booleans())
def test_the_one_pass_path_agrees_with_the_field_by_field_path(data: dict[str, Any], known_types_only: bool) -> None:
    """decode's fast path accepts exactly what the field-by-field checks accept, with the same result."""
    raw = json.dumps(data, allow_nan=True).encode()
    try:
        fast: Payment | str = decode(raw, known_types_only=known_types_only)
    except InvalidPayment as exc:
        fast = str(exc)
    try:
        parsed = orjson.loads(raw)
    except ValueError:  # NaN or Infinity, which json.dumps writes: refused before either path
        assert isinstance(fast, str) and fast.startswith("not JSON")
        return
    try:
        slow: Payment | str = _checked(parsed, b"\\" in raw, known_types_only)
    except InvalidPayment as exc:
        slow = str(exc)
    assert fast == slow
