"""The original tutorial's scripts and this project read each other's messages.

The four original scripts run unchanged (from tests/original_tutorial/) with a
stand-in ``kafka`` module that feeds them records and captures what they send
and print; their output is compared byte for byte with this project's.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import random
import sys
import time
import types
import warnings
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
import pytz

from fraud_pipeline import payment as payment_mod
from fraud_pipeline.clients import Producer
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.detector import Detector
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.processors import fraud_line, legit_line
from fraud_pipeline.rules import ORIGINAL as ORIGINAL_RULES
from fraud_pipeline.runtime import Summary
from fraud_pipeline.scenarios import DEFAULT_MIX, labelled_stream, simulated_clock
from fraud_pipeline.stage import LineBuffer, Output
from tests.unit.records import memory_states, record, sends

ORIGINAL = Path(__file__).resolve().parent.parent / "original_tutorial"


class _StopScript(Exception):
    pass


def run_original(
    script: str, values: Iterable[bytes] = (), monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Run an original script over ``values``; return its stdout lines and its sends."""
    sent: list[tuple[str, bytes]] = []

    class FakeProducer:
        def __init__(self, **config: Any) -> None:
            pass

        def send(self, topic: str, value: bytes) -> None:
            sent.append((topic, value))

    class FakeConsumer:
        def __init__(self, *topics: str, **config: Any) -> None:
            pass

        def __iter__(self) -> Any:
            return iter(types.SimpleNamespace(value=v) for v in values)

    fake = types.ModuleType("kafka")
    fake.KafkaProducer = FakeProducer  # type: ignore[attr-defined]
    fake.KafkaConsumer = FakeConsumer  # type: ignore[attr-defined]
    source = (ORIGINAL / f"{script}.py.txt").read_text(encoding="utf-8")
    out = io.StringIO()
    saved = sys.modules.get("kafka")
    sys.modules["kafka"] = fake
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(), contextlib.suppress(_StopScript):
            warnings.simplefilter("ignore", DeprecationWarning)  # datetime.utcnow() on newer Pythons
            exec(compile(source, f"original/{script}.py", "exec"), {"__name__": "__main__"})
    finally:
        if saved is not None:
            sys.modules["kafka"] = saved
        else:  # kafka-python was not imported before: leave no stand-in behind
            del sys.modules["kafka"]
    return out.getvalue().splitlines(), sent


def our_payments(n: int, seed: int = 7) -> list[payment_mod.Payment]:
    """What our producer sends in the tutorial's mode: the five fields, our optional ones and the entities."""
    rng, entities = random.Random(seed), payment_mod.entity_rng(seed)
    now = datetime.datetime(2026, 1, 22, 2, 50, 50, tzinfo=pytz.utc)
    return [payment_mod.generate(rng, now, 1000, entities) for _ in range(n)]


def scenario_payments(n: int, seed: int = 7) -> list[payment_mod.Payment]:
    """What our producer sends with --scenarios default: the regulars' history, then the labelled stream."""
    start = datetime.datetime(2026, 1, 22, 2, 50, 50, tzinfo=pytz.utc)
    items = labelled_stream(seed, 1000, DEFAULT_MIX, simulated_clock(start, 20.0))
    return [item.payment for item in islice(items, n)]


def test_our_messages_carry_the_entities_after_the_original_fields() -> None:
    for payment in our_payments(300):
        data = json.loads(payment_mod.encode(payment))
        assert list(data)[:5] == ["DATE", "TIME", "PAYMENT_TYPE", "AMOUNT", "TO"]
        card = ["CARD"] if payment.payment_type != "BITCOIN" else []
        merchant = ["MERCHANT"] if card else []
        assert list(data)[5:] == ["PAYMENT_ID", "ACCOUNT", "TIMESTAMP_MS", *card, "DEVICE", "IP", *merchant]


@pytest.mark.parametrize(("script", "line"), [("fraud_processor", fraud_line), ("legit_processor", legit_line)])
def test_original_processors_read_scenario_messages_with_entities(script: str, line: Any) -> None:
    payments = scenario_payments(3000)
    assert {"history", "normal"} <= {"history" if p.account and p.account.startswith("REG") else "normal" for p in payments}
    values = [payment_mod.encode(p) for p in payments]
    printed, _ = run_original(script, values)
    assert printed == [line(p) for p in payments]


def test_original_detector_reads_scenario_messages_with_entities() -> None:
    payments = scenario_payments(2000)
    values = [payment_mod.encode(p) for p in payments]
    printed, sent = run_original("fraud_detector", values)
    assert printed == [f"{topic} {p.payment_type == 'BITCOIN'} {p.payment_type}"
                       for p, (topic, _) in zip(payments, sent, strict=True)]
    # it forwards the whole object, entities included
    assert [json.loads(value) for _, value in sent] == [json.loads(v) for v in values]


def test_original_producer_messages_are_read_by_our_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps >= 60:
            raise _StopScript

    monkeypatch.setattr(time, "sleep", sleep)
    printed, sent = run_original("payment_producer")
    assert len(sent) == 60
    assert {topic for topic, _ in sent} == {"payments"}
    for (_, value), line in zip(sent, printed, strict=True):
        payment = payment_mod.decode(value)
        # what the original printed is what we print for the same payment
        assert repr(payment.original_fields()) == line
        assert payment.payment_id is None and payment.account is None


def test_our_messages_route_and_print_as_the_original_detector() -> None:
    payments = our_payments(300)
    values = [payment_mod.encode(p) for p in payments]
    printed, sent = run_original("fraud_detector", values)

    producer = MagicMock(spec_set=Producer)
    producer.partition_count.return_value = 2  # the routed topics' partitions
    out = io.StringIO()
    settings = Settings(ConnectionSettings(("localhost:9091",)))
    rules = LiveRules(ORIGINAL_RULES, None, MagicMock())
    lines = LineBuffer(Summary("t", "payments"), False, out)
    detector = Detector(Output(producer), settings, MagicMock(), lines, rules, memory_states())
    for offset, value in enumerate(values):
        detector.handle(record(value, offset=offset))
    detector.emit()

    assert out.getvalue().splitlines() == printed
    ours = [(s.topic, s.value) for s in sends(producer)]
    assert [topic for topic, _ in ours] == [topic for topic, _ in sent]
    # We forward the bytes with our decision appended; the original re-encoded them:
    # same JSON object either way, once the decision is set aside.
    decided = [json.loads(v) for _, v in ours]
    assert [d.pop("DECISION")["fraud"] for d in decided] == [topic == "fraud_payments" for topic, _ in sent]
    assert decided == [json.loads(v) for _, v in sent]
    assert {"fraud_payments", "legit_payments"} == {topic for topic, _ in sent}


@pytest.mark.parametrize(("script", "line"), [("fraud_processor", fraud_line), ("legit_processor", legit_line)])
def test_original_processors_print_what_ours_print(script: str, line: Any) -> None:
    payments = our_payments(500)
    values = [payment_mod.encode(p) for p in payments]
    printed, _ = run_original(script, values)
    assert printed == [line(p) for p in payments]
    assert len(set(printed)) > 5


def test_five_field_message_from_original_is_accepted_everywhere() -> None:
    value = json.dumps(
        {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "BITCOIN", "AMOUNT": 42, "TO": "stranger"}
    ).encode("utf-8")
    payment = payment_mod.decode(value)
    assert fraud_line(payment) == "[ALERT] fraud detected payment to: stranger - 42"
    printed, _ = run_original("fraud_processor", [value])
    assert printed == ["[ALERT] fraud detected payment to: stranger - 42"]
