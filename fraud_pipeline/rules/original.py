"""Fraud rules: pure functions of a payment, no Kafka.

The original tutorial's only rule: a BITCOIN payment is suspicious.
"""

from __future__ import annotations

from ..payment import Payment


def is_suspicious(payment: Payment) -> bool:
    """The original rule: a payment made in BITCOIN is suspicious."""
    return payment.payment_type == "BITCOIN"


def route(payment: Payment, fraud_topic: str, legit_topic: str) -> str:
    """The topic a payment goes to: ``fraud_topic`` if suspicious, else ``legit_topic``."""
    return fraud_topic if is_suspicious(payment) else legit_topic
