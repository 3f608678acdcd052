"""Rules over keys other than the account: the stages' plan, and the chain's decisions equal to one engine's over all payments."""

from __future__ import annotations

import io
import random
from typing import Any
from unittest.mock import MagicMock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_pipeline.clients import Producer
from fraud_pipeline.config import ConsumerSettings, Settings
from fraud_pipeline.detector import Detector
from fraud_pipeline.features import FeatureStage, Hop, plan, rekeyed_groups
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.payment import Payment, encode
from fraud_pipeline.rules import Engine, MemoryTable, parse_ruleset
from fraud_pipeline.runtime import Summary
from fraud_pipeline.stage import DeadLetters, LineBuffer, Output
from tests.unit.records import GroupConsumer, Sent, memory_states, record, sends

RULES = parse_ruleset({
    "threshold": 2,
    "rules": [
        {"id": "shared-device", "aggregate": {"function": "distinct", "field": "ACCOUNT", "group_by": "DEVICE",
                                              "window_s": 3600, "op": ">", "value": 2}},
        {"id": "busy-payee", "weight": 1, "aggregate": {"function": "count", "group_by": "TO", "window_s": 600,
                                                         "op": ">=", "value": 4}},
        {"id": "burst", "aggregate": {"function": "count", "group_by": "ACCOUNT", "window_s": 120, "op": ">", "value": 2}},
        {"id": "bitcoin", "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}},
    ],
})
SETTINGS = Settings(consumer=ConsumerSettings(group_id="g"))
PARTITIONS = 3


def test_the_account_rules_run_in_the_first_stage_and_the_last_group_key_decides() -> None:
    groups = rekeyed_groups(RULES)
    assert groups == (("DEVICE",), ("TO",))
    assert plan(SETTINGS, groups) == [
        Hop(None, "payments", "g-by-DEVICE-repartition", "g", ("DEVICE",)),
        Hop(("DEVICE",), "g-by-DEVICE-repartition", "g-by-TO-repartition", "g-by-DEVICE", ("TO",)),
    ]
    assert plan(SETTINGS, [("DEVICE",)]) == [Hop(None, "payments", "g-by-DEVICE-repartition", "g", ("DEVICE",))]
    assert plan(SETTINGS, []) == []


def _producer() -> MagicMock:
    producer = MagicMock(spec_set=Producer)
    producer.partition_count.return_value = 2
    return producer


def _restored(handler: Any) -> Any:
    handler.partitions_assigned(set(range(PARTITIONS)))
    while handler.waiting():
        handler.restore(GroupConsumer(), 1.0)
    return handler


def _lines() -> LineBuffer:
    return LineBuffer(Summary("t", "payments"), True, io.StringIO())


def _records(sent: list[Sent], offsets: dict[tuple[str, int], int]) -> list[Any]:
    """What a stage sent, read back as the next stage's records (in the order sent: each partition's order kept)."""
    out = []
    for s in sent:
        assert s.partition is not None
        offset = offsets[s.topic, s.partition] = offsets.get((s.topic, s.partition), -1) + 1
        out.append(record(s.value, topic=s.topic, partition=s.partition, offset=offset, key=s.key,
                          headers=tuple(s.headers or ()), timestamp=0))
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_chain_decides_as_one_engine_over_every_payment(seed: int) -> None:
    rng = random.Random(seed)
    at = 1_700_000_000_000
    stream = []
    for n in range(120):
        at += rng.choice((500, 5_000, 60_000))
        account = f"ACC{rng.randrange(9)}"
        stream.append(Payment("01/01/2024", "00:00:00", rng.choice(("VISA", "VISA", "BITCOIN")), rng.randrange(1, 100),
                              rng.choice(("me", "mom", "shop")), f"p{n}", account, at, device=f"dev-{rng.randrange(4)}"))
    reference = Engine(RULES)
    table = MemoryTable()
    expected = {p.payment_id: reference.decide(p, p.timestamp_ms or 0, table) for p in stream}

    hops = plan(SETTINGS, rekeyed_groups(RULES))
    offsets: dict[tuple[str, int], int] = {}
    records = [record(encode(p), partition=int(p.account[3:]) % PARTITIONS, key=(p.account or "").encode(), timestamp=p.timestamp_ms or 0)
               for p in stream]
    for hop in hops:
        producer = _producer()
        output = Output(producer)
        stage = _restored(FeatureStage(hop, output, DeadLetters(output, "dlq", "t"), _lines(), lambda: RULES,
                                       memory_states(), PARTITIONS))
        for each in records:
            stage.handle(each)
        assert {s.topic for s in sends(producer)} == {hop.target}
        records = _records(sends(producer), offsets)

    producer = _producer()
    output = Output(producer)
    rules = LiveRules(RULES, None, MagicMock())
    detector = _restored(Detector(output, SETTINGS, MagicMock(), _lines(), rules, memory_states(), fields=("TO",)))
    for each in records:
        detector.handle(each)
    routed = sends(producer)
    assert len(routed) == len(stream)
    for s in routed:
        value = orjson.loads(s.value or b"")
        want = expected[value["PAYMENT_ID"]]
        got = value["DECISION"]
        assert got["fraud"] == want.fraud
        assert got["score"] == pytest.approx(want.score)
        assert [(f["id"], f["reason"]) for f in got["rules"]] == [(f.id, f.reason) for f in want.fired]
        assert s.topic == ("fraud_payments" if want.fraud else "legit_payments")
        assert s.key == value["ACCOUNT"].encode()
        # the routed partition follows the payment's own partition, as without hops
        assert s.partition == int(value["ACCOUNT"][3:]) % PARTITIONS % 2
    assert any(want.fraud for want in expected.values()) and not all(want.fraud for want in expected.values())
    assert any(f.id == "shared-device" for want in expected.values() for f in want.fired)
