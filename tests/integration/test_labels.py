"""Labels that measure the rules, on the real cluster: the backtest's precision per rule and Precision@k from a
labels topic filled with the generator's own verdicts equal the ones from the generator's labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from fraud_pipeline.cases import Label
from tests.integration.conftest import ROOT, Pipeline

pytestmark = pytest.mark.integration


def backtest(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fraud_pipeline.backtest", "--recommended", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_backtest_measures_the_rules_with_the_labels_topic(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path,
) -> None:
    data, own, topic = tmp_path / "payments.jsonl", tmp_path / "own.json", tmp_path / "topic.json"
    backtest("--count", "4000", "--seed", "11", "--mix", "default", "--save", str(data), "--json", str(own),
             "--alert-budget", "50")
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    for n, line in enumerate(lines):
        label = Label(line["payment"]["PAYMENT_ID"], line["label"], "generator", 1_764_000_000_000 + n)
        raw_producer.send(pipeline.topics.labels, key=label.to_record()[0], value=label.to_record()[1])
    # one payment labelled twice: the latest label counts, as the compacted topic keeps it
    first = lines[0]["payment"]["PAYMENT_ID"]
    wrong = "legit" if lines[0]["label"] == "fraud" else "fraud"
    raw_producer.send(pipeline.topics.labels, key=first.encode(), value=json.dumps(
        Label(first, wrong, "ana", 1).to_dict()).encode())
    right = Label(first, lines[0]["label"], "ana", 2)
    raw_producer.send(pipeline.topics.labels, key=right.to_record()[0], value=right.to_record()[1])
    raw_producer.flush()
    done = backtest("--input", str(data), "--labels-topic", pipeline.topics.labels, "--bootstrap-servers",
                    pipeline.bootstrap, "--client", pipeline.client, "--json", str(topic), "--alert-budget", "50")
    by_generator, by_topic = json.loads(own.read_text()), json.loads(topic.read_text())
    assert f"labelled by topic {pipeline.topics.labels} ({len(lines)} labels)" in by_topic["title"]
    assert by_topic["skipped"] == {}
    assert by_topic["overall"]["payments"] == by_generator["overall"]["payments"] == len(lines)
    precision = {r["rule"]: (r["alerts"], r["true_alerts"], r["precision"]) for r in by_generator["rules"]}
    assert {r["rule"]: (r["alerts"], r["true_alerts"], r["precision"]) for r in by_topic["rules"]} == precision
    assert sum(alerts for alerts, _, _ in precision.values()) > 100  # the rules fired: the equality is not of zeros
    assert by_topic["precision_at_k"] == by_generator["precision_at_k"]
    assert by_topic["precision_at_k"]["k"] == 50 and by_topic["precision_at_k"]["precision"] is not None
    assert "precision@50=" in done.stdout

    # Labels that say otherwise change the measure: every label flipped (later labels replace earlier ones),
    # each rule's true alerts become its false ones.
    for n, line in enumerate(lines):
        label = Label(line["payment"]["PAYMENT_ID"], "legit" if line["label"] == "fraud" else "fraud", "ana", n)
        raw_producer.send(pipeline.topics.labels, key=label.to_record()[0], value=label.to_record()[1])
    raw_producer.flush()
    backtest("--input", str(data), "--labels-topic", pipeline.topics.labels, "--bootstrap-servers", pipeline.bootstrap,
             "--client", pipeline.client, "--json", str(topic))
    inverse = {r["rule"]: (r["alerts"], r["alerts"] - r["true_alerts"]) for r in json.loads(topic.read_text())["rules"]}
    assert inverse == {rule: (alerts, true) for rule, (alerts, true, _) in precision.items()}
