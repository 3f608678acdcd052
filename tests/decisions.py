"""The decisions a detector routed, and the ones the backtest's single engine makes over the same records."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from fraud_pipeline.backtest import Example, decided
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.kafka_io import read_span
from fraud_pipeline.payment import InvalidPayment, decode, event_time
from fraud_pipeline.rules import Decision, RuleSet

Verdict = tuple[str, float, tuple[str, ...]]
"""What must not change between runs: the outcome, the score, the rules fired (``id@version``, shadow ones too)."""


def verdict(decision: Decision) -> Verdict:
    return decision.outcome, decision.score, tuple(f"{f.id}@{f.version}" for f in decision.fired)


def _settings(bootstrap: str) -> Settings:
    return Settings(ConnectionSettings(bootstrap_servers=tuple(bootstrap.split(","))))


def routed(bootstrap: str, topics: Iterable[str]) -> dict[str, list[Verdict]]:
    """Per payment id, the decisions found on the routed topics (more than one: routed more than once)."""
    found: dict[str, list[Verdict]] = {}
    for topic in topics:
        for record in read_span(_settings(bootstrap), topic):
            data = orjson.loads(record.value or b"{}")
            decision = Decision.from_dict(data.get("DECISION"))
            assert decision is not None, f"{topic}: no decision in {record.value!r}"
            found.setdefault(str(data["PAYMENT_ID"]), []).append(verdict(decision))
    return found


def expected(bootstrap: str, payments_topic: str, ruleset: RuleSet, partitions: int) -> dict[str, Verdict]:
    """Per payment id, the backtest's decision over the payments topic's readable records (each partition in offset
    order)."""
    examples = []
    for record in read_span(_settings(bootstrap), payments_topic):
        try:
            payment = decode(record.value)
        except InvalidPayment:  # dead-lettered by the detector: decided by no one
            continue
        examples.append(Example(payment, "legit", "any", event_time(payment, record.timestamp), record.partition))
    return {str(example.payment.payment_id): verdict(decision) for example, decision in decided(examples, ruleset, partitions)}


def differences(found: dict[str, list[Verdict]], wanted: dict[str, Verdict]) -> dict[str, tuple[list[Verdict], Verdict | None]]:
    """Payments routed other than once, or decided otherwise than ``wanted``."""
    return {pid: (found.get(pid, []), wanted.get(pid)) for pid in found.keys() | wanted.keys()
            if found.get(pid, []) != [wanted.get(pid)]}
