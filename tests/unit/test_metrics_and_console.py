"""The metrics' collection and the console's reading of records, without a cluster."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fraud_pipeline import metrics as metrics_module
from fraud_pipeline.clients import ClientError, Record, TopicPartition
from fraud_pipeline.console.groups import watermarks
from fraud_pipeline.console.monitor import alert_json, dead_letter_json, parse_decision_header, rules_json
from fraud_pipeline.metrics import Histogram, Metrics
from fraud_pipeline.rules import ORIGINAL, Rule, RuleSet


def exposition(metrics: Metrics) -> str:
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode()


def test_outcomes_are_read_from_the_summary_counts_and_labelled() -> None:
    metrics = Metrics("fraud_detector", enabled=True)
    counts: Counter[str] = Counter({"fraud_payments": 3, "legit_payments": 5, "dead-lettered": 1})
    metrics.outcomes = counts
    metrics.outcome_names = {"fraud_payments": "fraud", "legit_payments": "legit"}
    text = exposition(metrics)
    assert 'fraud_records_total{outcome="fraud",stage="fraud_detector"} 3.0' in text
    assert 'fraud_records_total{outcome="legit",stage="fraud_detector"} 5.0' in text
    assert 'fraud_records_total{outcome="dead_lettered",stage="fraud_detector"} 1.0' in text
    counts["fraud_payments"] += 2  # read when scraped, not copied when set
    assert 'fraud_records_total{outcome="fraud",stage="fraud_detector"} 5.0' in exposition(metrics)


def test_fired_rules_are_summed_over_distinct_decisions() -> None:
    metrics = Metrics("fraud_detector", enabled=True)
    burst = SimpleNamespace(id="burst", version=2, mode="enabled")
    bitcoin = SimpleNamespace(id="bitcoin", version=1, mode="shadow")
    for _ in range(3):
        metrics.decided(0, ("decision", b"fraud a"), [burst, bitcoin])
    metrics.decided(0, ("decision", b"legit b"), [bitcoin])
    metrics.decided(0, ("decision", b"legit"), [])
    text = exposition(metrics)
    assert 'fraud_rule_fired_total{mode="enabled",rule="burst",version="2"} 3.0' in text
    assert 'fraud_rule_fired_total{mode="shadow",rule="bitcoin",version="1"} 4.0' in text
    assert "fraud_decision_seconds_count 5.0" in text


def test_decision_latency_is_observed_when_a_unit_is_acknowledged_and_not_for_what_is_rolled_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics("fraud_detector", enabled=True)
    now = [100.0]
    monkeypatch.setattr(metrics_module.time, "time", lambda: now[0])
    metrics.decided(99_000, "legit", [])
    metrics.decided(99_500, "legit", [])
    metrics.sealed()  # unit 1: two records
    metrics.decided(99_900, "legit", [])
    metrics.sealed()  # unit 2: one record
    metrics.decided(99_950, "legit", [])  # not sealed yet
    now[0] = 100.25
    metrics.acknowledged()  # unit 1 only
    latency = metrics.decision_latency_seconds
    assert sum(latency.counts) == 2 and latency.sum == pytest.approx(1.25 + 0.75)
    metrics.rolled_back()  # unit 2 and the rest are routed again later
    metrics.acknowledged()
    assert sum(latency.counts) == 2
    assert "fraud_decision_latency_seconds_count 2.0" in exposition(metrics)


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.5, 0.7, 3.0):
        histogram.observe(value)
    family = histogram.family("x_seconds", "doc")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets == {"0.1": 1, "1.0": 3, "+Inf": 4}
    assert [s.value for s in family.samples if s.name == "x_seconds_count"] == [4]


def test_a_disabled_metrics_object_never_asks_for_lag() -> None:
    assert not Metrics("x").lag_due()
    enabled = Metrics("x", enabled=True)
    assert enabled.lag_due() and not enabled.lag_due()  # at most every LAG_INTERVAL_S


def test_decision_headers_are_parsed_into_rule_refs() -> None:
    assert parse_decision_header(b"fraud score=2 rules=burst@1,large-to-stranger@3 shadow=bitcoin@1") == [
        ("burst", 1, "enabled"), ("large-to-stranger", 3, "enabled"), ("bitcoin", 1, "shadow"),
    ]
    assert parse_decision_header(b"legit score=0") == []
    assert parse_decision_header(b"garbage rules=@x,ok@2") == [("ok", 2, "enabled")]


def record(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> Record:
    return Record("fraud_payments", 2, 17, b"acct-1", value, headers or [], 1_700_000_000_000)


def test_an_alert_carries_the_payment_and_its_reasons() -> None:
    decision = {"score": 2, "threshold": 1, "rules": [{"id": "burst", "version": 1, "mode": "enabled", "weight": 2,
                                                       "reason": "5 payments in 60s"}]}
    value = orjson.dumps({"AMOUNT": 90, "TO": "me", "PAYMENT_TYPE": "VISA", "DECISION": decision})
    alert = alert_json(record(value, [("decision", b"fraud score=2 rules=burst@1")]))
    assert alert["payment"] == {"AMOUNT": 90, "TO": "me", "PAYMENT_TYPE": "VISA"}
    assert alert["score"] == 2 and alert["rules"][0]["reason"] == "5 payments in 60s"
    assert alert["headers"] == [["decision", "fraud score=2 rules=burst@1"]]
    assert (alert["partition"], alert["offset"], alert["key"]) == (2, 17, "acct-1")


def test_an_unreadable_fraud_record_is_still_listed_whole() -> None:
    alert = alert_json(record(b"\xff not json"))
    assert alert["payment"] is None and alert["rules"] == [] and alert["value"] == "\ufffd not json"


def test_a_dead_letter_shows_its_error_and_source() -> None:
    entry = dead_letter_json(record(b"{", [("error", b"not JSON"), ("source.topic", b"payments"),
                                           ("source.partition", b"4"), ("source.offset", b"99")]))
    assert entry["error"] == "not JSON" and entry["source"] == "payments/4/99"


def test_rules_in_force_come_with_their_hits_and_rules_gone_are_kept_apart() -> None:
    published = Rule("burst", version=2, mode="shadow")
    rules = RuleSet(ORIGINAL.threshold, (*ORIGINAL.rules, published))
    hits = Counter({("bitcoin", 1, "enabled"): 7, ("burst", 2, "shadow"): 3, ("old", 1, "enabled"): 1})
    rows = {row["id"]: row for row in rules_json(rules, ORIGINAL, hits)}
    assert rows["bitcoin"]["hits"] == 7 and rows["bitcoin"]["source"] == "baseline"
    assert rows["burst"]["hits"] == 3 and rows["burst"]["source"] == "topic" and rows["burst"]["mode"] == "shadow"
    assert rows["old"]["source"] == "no longer in force"


class _Offsets:
    """A consumer whose watermarks fail for any request naming ``gone`` (a topic deleted while it is looked at)."""

    def __init__(self, gone: str) -> None:
        self.gone = gone
        self.asked: list[list[str]] = []

    def watermarks(self, partitions: list[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        self.asked.append(sorted({tp.topic for tp in partitions}))
        if any(tp.topic == self.gone for tp in partitions):
            raise ClientError(f"unknown topic {self.gone}")
        return {tp: (0, 10 * tp.partition) for tp in partitions}


def test_the_topics_offsets_are_asked_at_once_and_topic_by_topic_only_after_a_failure() -> None:
    wanted = [TopicPartition(topic, p) for topic in ("a", "b", "c") for p in (0, 1)]
    fine = _Offsets(gone="none")
    assert watermarks(fine, wanted) == {tp: (0, 10 * tp.partition) for tp in wanted}
    assert fine.asked == [["a", "b", "c"]]  # one request for every topic
    deleted = _Offsets(gone="b")
    assert set(watermarks(deleted, wanted)) == {tp for tp in wanted if tp.topic != "b"}  # the others still shown
    assert deleted.asked == [["a", "b", "c"], ["a"], ["b"], ["c"]]
