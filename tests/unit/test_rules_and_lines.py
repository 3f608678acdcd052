from __future__ import annotations

import pytest

from fraud_pipeline.payment import Payment
from fraud_pipeline.processors import fraud_line, legit_line
from fraud_pipeline.rules import ORIGINAL, Engine


def pay(payment_type: str = "VISA", to: str = "me", amount: int = 42) -> Payment:
    return Payment("01/22/2023", "11:50:50", payment_type, amount, to)


@pytest.mark.parametrize(("payment_type", "suspicious"), [("BITCOIN", True), ("VISA", False), ("MASTERCARD", False)])
def test_only_bitcoin_is_suspicious(payment_type: str, suspicious: bool) -> None:
    # the original tutorial's rule, as the detector runs it by default
    decision = Engine(ORIGINAL).decide(pay(payment_type), 0)
    assert decision.fraud is suspicious
    assert [fired.id for fired in decision.fired] == (["bitcoin"] if suspicious else [])


def test_fraud_lines() -> None:
    assert fraud_line(pay("BITCOIN", "stranger", 42)) == "[ALERT] fraud detected payment to: stranger - 42"
    assert fraud_line(pay("BITCOIN", "mom", 42)) == "[PROCESSING BITCOIN] payment to: mom - 42"


def test_legit_lines() -> None:
    assert legit_line(pay("VISA", "me", 7)) == "[VISA] payment to: me - 7"
    assert legit_line(pay("MASTERCARD", "dad", 7)) == "[MASTERCARD] payment to: dad - 7"
    assert legit_line(pay("AMEX", "dad", 7)) == "[ALERT] unable to process payments"
