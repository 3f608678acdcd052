"""Prometheus metrics of the running scripts, scraped over HTTP and compared with what the topics hold."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from fraud_pipeline.console.monitor import parse_decision_header
from fraud_pipeline.payment import PAYMENT_TYPES
from fraud_pipeline.rules import RULESETS_DIR, load_ruleset
from tests.integration.conftest import Pipeline, read_topic, summary_count
from tests.net import free_port

RECOMMENDED = RULESETS_DIR / "recommended.yaml"
COUNT = 1500


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body) for sample in family.samples
    }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_until(port: int, done: Callable[[Samples], bool], proc: subprocess.Popen[str], timeout_s: float = 120) -> Samples:
    """Scrape every 0.3 s until ``done`` says so (the last scrape then); fail if ``proc`` exits first."""
    samples: Samples = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the script exited:\n{proc.communicate()[1][-3000:]}"
        with contextlib.suppress(OSError):  # not serving yet
            samples = scrape(port)
            if done(samples):
                return samples
        time.sleep(0.3)
    raise AssertionError(f"metrics on port {port} never got there; last scrape: {samples}")


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (sample, labels), value in samples.items() if sample == name}


def test_detector_metrics_match_the_topics(pipeline: Pipeline) -> None:
    pipeline.run("payment_producer", "--count", str(COUNT), "--rate", "0", "--seed", "41", "--scenarios", "default", "--quiet")
    port = free_port()
    detector = pipeline.start("fraud_detector", "--quiet", "--rules", str(RECOMMENDED), "--metrics-port", str(port),
                              group="fraud-detector")

    def caught_up(samples: Samples) -> bool:
        lag = by_label(samples, "fraud_consumer_lag", "partition")
        # The recommended rules group by device and payee too: the deciding stage reads the re-keyed topic, written in
        # transactions, whose last offset is a transaction marker, never read as a record (kafka-python counts it).
        caught = len(lag) == 6 and all(value <= 1 for value in lag.values())
        return sum(by_label(samples, "fraud_records_total", "outcome").values()) >= COUNT and caught

    samples = scrape_until(port, caught_up, detector)
    detector.terminate()
    assert detector.wait(60) == 0

    fraud = read_topic(pipeline.bootstrap, pipeline.topics.fraud)
    legit = read_topic(pipeline.bootstrap, pipeline.topics.legit)
    outcomes = by_label(samples, "fraud_records_total", "outcome")
    assert outcomes == {"fraud": len(fraud), "legit": len(legit)}, outcomes
    assert len(fraud) > 0
    assert samples[("fraud_decision_seconds_count", ())] == COUNT
    assert samples[("fraud_decision_latency_seconds_count", ())] == COUNT  # each acknowledged once its transaction committed
    assert samples[("fraud_batch_seconds_count", ())] > 0
    committed = by_label(samples, "fraud_transactions_total", "result")["committed"]
    assert committed > 0
    # each committed transaction's steps, timed (a rolled-back one's are not)
    steps = {dict(labels)["step"]: value for (name, labels), value in samples.items() if name == "fraud_transaction_step_seconds_count"}
    assert steps == {"flush": committed, "send_offsets": committed, "commit": committed}
    assert set(by_label(samples, "fraud_consumer_lag", "partition")) == {str(p) for p in range(6)}
    assert sum(by_label(samples, "fraud_window_keys", "partition").values()) > 0  # the recommended rules keep windows

    expected_hits: Counter[tuple[str, str, str]] = Counter()
    for record in fraud + legit:
        header = dict(record.headers)["decision"]
        expected_hits.update((rule, str(version), mode) for rule, version, mode in parse_decision_header(header))
    fired = {
        (labels["rule"], labels["version"], labels["mode"]): value
        for (name, raw), value in samples.items() if name == "fraud_rule_fired_total" for labels in [dict(raw)]
    }
    assert fired == dict(expected_hits)
    assert any(mode == "shadow" for _, _, mode in fired), "the recommended set's shadow rule never fired"

    in_force = {(dict(raw)["rule"], dict(raw)["mode"]) for (name, raw) in samples if name == "fraud_rules_info"}
    assert in_force == {(rule.id, rule.mode) for rule in load_ruleset(RECOMMENDED).rules}
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_producer_and_processor_metrics(pipeline: Pipeline) -> None:
    producer_port, processor_port = free_port(), free_port()
    producer = pipeline.start("payment_producer", "--rate", "300", "--seed", "5", "--quiet", "--metrics-port", str(producer_port))
    samples = scrape_until(producer_port, lambda s: sum(by_label(s, "fraud_records_total", "outcome").values()) >= 600, producer)
    sent = by_label(samples, "fraud_records_total", "outcome")
    producer.terminate()
    assert producer.wait(60) == 0
    total = summary_count(producer.communicate()[1], "payment_producer")
    assert 600 <= sum(sent.values()) <= total
    assert set(sent) == {t.lower() for t in PAYMENT_TYPES}, sent  # by payment type, as its closing summary counts

    pipeline.run("fraud_detector", "--quiet", "--idle-timeout", "5", group="fraud-detector")
    legit = len(read_topic(pipeline.bootstrap, pipeline.topics.legit))
    processor = pipeline.start("legit_processor", "--quiet", "--metrics-port", str(processor_port), group="legit-processor")
    samples = scrape_until(processor_port, lambda s: sum(by_label(s, "fraud_records_total", "outcome").values()) >= legit,
                           processor)
    printed = by_label(samples, "fraud_records_total", "outcome")
    processor.terminate()
    assert processor.wait(60) == 0
    assert sum(printed.values()) == legit, printed
    assert set(printed) == {t.lower() for t in PAYMENT_TYPES} - {"bitcoin"}, printed
