"""The payment fields rules and lists read: their wire names, kinds and Payment attributes."""

from __future__ import annotations

import math
from typing import Any

from ..errors import RuleError
from ..payment import Payment

TEXT_FIELDS = ("DATE", "TIME", "PAYMENT_TYPE", "TO", "PAYMENT_ID", "ACCOUNT", "CARD", "DEVICE", "IP", "MERCHANT")
NUMBER_FIELDS = ("AMOUNT", "TIMESTAMP_MS")
ATTRIBUTES = {
    "DATE": "date", "TIME": "time", "PAYMENT_TYPE": "payment_type", "TO": "to",
    "PAYMENT_ID": "payment_id", "ACCOUNT": "account", "AMOUNT": "amount", "TIMESTAMP_MS": "timestamp_ms",
    "CARD": "card", "DEVICE": "device", "IP": "ip", "MERCHANT": "merchant",
}
"""Wire name -> Payment attribute."""
FIELDS = TEXT_FIELDS + NUMBER_FIELDS


def field_value(payment: Payment, field: str) -> Any:
    """The value of a wire field of a payment (None when absent)."""
    return getattr(payment, ATTRIBUTES[field])


def attribute_name(field: str) -> str:
    """The Payment attribute holding a wire field (``TO`` -> ``to``)."""
    return ATTRIBUTES[field]


def check_field(field: Any, path: str, *, numeric: bool = False) -> str:
    """``field`` if it names a payment field (a numeric one when ``numeric``), else RuleError."""
    allowed = NUMBER_FIELDS if numeric else FIELDS
    if field not in allowed:
        raise RuleError(path, f"must be one of {', '.join(allowed)}, got {field!r}")
    return str(field)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
