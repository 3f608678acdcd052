"""Rules as data on the real cluster: live changes through the rules topic, and window state
that survives a detector restart and a rebalance to a second detector."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from fraud_pipeline.payment import Payment, encode, seoul_date_time
from fraud_pipeline.state import changelog_topic
from tests.integration.conftest import ROOT, Pipeline, kafka_python_connection, read_topic, summary_count, wait_for_group

pytestmark = pytest.mark.integration

BURST_RULES = """\
threshold: 1
rules:
  - id: burst
    description: more than 3 payments from one account within 2 minutes
    aggregate: {function: count, group_by: ACCOUNT, window_s: 120, op: ">", value: 3}
"""


def payment(account: str, amount: int = 7, payment_type: str = "VISA", to: str = "mom") -> Payment:
    now = datetime.datetime.now(datetime.UTC)
    date, clock = seoul_date_time(now)
    return Payment(date, clock, payment_type, amount, to, str(uuid.uuid4()), account, int(now.timestamp() * 1000))


def send(producer: KafkaProducer, topic: str, payments: list[Payment]) -> None:
    for p in payments:
        producer.send(topic, key=(p.account or "").encode(), value=encode(p))
    producer.flush()


def routed(pipeline: Pipeline) -> dict[str, tuple[bool, dict]]:
    """payment id -> (went to fraud, its DECISION) for every routed payment."""
    out = {}
    for topic, fraud in ((pipeline.topics.fraud, True), (pipeline.topics.legit, False)):
        for record in read_topic(pipeline.bootstrap, topic):
            value = json.loads(record.value)
            out[value["PAYMENT_ID"]] = (fraud, value["DECISION"])
    return out


def wait_routed(pipeline: Pipeline, count: int, timeout_s: float = 60) -> dict[str, tuple[bool, dict]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = routed(pipeline)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} of {count} payments routed in {timeout_s}s"
        time.sleep(0.5)


def test_a_published_rule_changes_routing_within_seconds_and_a_bad_one_is_rejected(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path
) -> None:
    detector = pipeline.start("fraud_detector", "--idle-timeout", "6", "--quiet", group="detector")
    try:
        wait_for_group(pipeline.bootstrap, pipeline.group("detector"), 1, detector)
        sent_at: dict[str, float] = {}
        stop = threading.Event()

        def probes() -> None:  # a VISA payment of 95 every 100 ms: legit under the original rule
            while not stop.is_set():
                p = payment("ACC-PROBE", amount=95)
                send(raw_producer, pipeline.topics.payments, [p])
                sent_at[p.payment_id or ""] = time.time()
                stop.wait(0.1)

        sender = threading.Thread(target=probes, daemon=True)
        sender.start()
        time.sleep(3)
        rule = tmp_path / "big.json"
        rule.write_text(json.dumps({"id": "big", "description": "90 or more", "when": {"field": "AMOUNT", "op": ">=", "value": 90}}))
        publish_started = time.time()
        published = pipeline.run("fraud_rules", "publish", str(rule), "--reason", "a card-testing wave now")
        published_at = time.time()
        assert "published big@1 (enabled)" in published.stdout
        assert "recorded as emergency change E-" in published.stdout, published.stdout
        time.sleep(8)
        # An invalid rule and a rule under the wrong key: both rejected, the running set unchanged.
        broken = {"id": "broken", "when": {"field": "AMOUNT", "op": "<", "value": "x"}}
        raw_producer.send(pipeline.topics.rules, key=b"broken", value=json.dumps(broken).encode())
        misfiled = {"id": "big", "when": {"field": "AMOUNT", "op": ">", "value": 1000}}
        raw_producer.send(pipeline.topics.rules, key=b"other", value=json.dumps(misfiled).encode())
        raw_producer.flush()
        time.sleep(4)
        stop.set()
        sender.join()
        decided = wait_routed(pipeline, len(sent_at))
    finally:
        _, stderr = detector.communicate(timeout=60)
    assert detector.returncode == 0, stderr[-3000:]

    before = [pid for pid, at in sent_at.items() if at < publish_started - 2]
    assert before and not any(decided[pid][0] for pid in before), "probes before the rule must be legit"
    # From the last probe the old rules let through, every later one was caught.
    last_legit = max(at for pid, at in sent_at.items() if not decided[pid][0])
    delay = last_legit - published_at
    print(f"\nlast probe routed by the old rules was sent {delay:+.2f}s after `fraud_rules publish` returned")
    assert delay <= 5.0
    after = [pid for pid, at in sent_at.items() if at >= published_at + 5]
    # about 70 probes at 10 a second; fewer on a loaded machine, where each send waits longer
    assert len(after) > 20 and all(decided[pid][0] for pid in after), "every probe after the 5 s mark must be fraud"
    assert {decided[pid][1]["rules"][0]["reason"] for pid in after} == {"AMOUNT=95 >= 90"}

    rejected = read_topic(pipeline.bootstrap, pipeline.topics.rules_rejected)
    errors = {r.key: dict(r.headers)["error"].decode() for r in rejected}
    assert set(errors) == {b"broken", b"other"}
    assert "when.value: AMOUNT is a number" in errors[b"broken"]
    assert "key is 'other' but the rule's id is 'big'" in errors[b"other"]
    assert stderr.count("rejected rule record") == 2


def test_velocity_state_survives_a_restart(pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path) -> None:
    rules = tmp_path / "burst.yaml"
    rules.write_text(BURST_RULES)
    accounts = [f"ACC-R{n:02d}" for n in range(12)]
    first = [payment(a) for a in accounts for _ in range(2)]
    send(raw_producer, pipeline.topics.payments, first)
    state = tmp_path / "state"
    args = ("--rules", str(rules), "--idle-timeout", "3", "--quiet", "--state-dir", str(state))
    pipeline.run("fraud_detector", *args, group="detector")
    # A new process on a new machine (no local store): the state comes back from the changelog, not from the input.
    shutil.rmtree(state)
    third = [payment(a) for a in accounts]
    fourth = [payment(a) for a in accounts]
    send(raw_producer, pipeline.topics.payments, third + fourth)
    again = pipeline.run("fraud_detector", *args, group="detector")
    assert summary_count(again.stderr, "fraud_detector") == 24
    restored = [int(n) for n in re.findall(r"partition \d+ ready: (\d+) change\(s\) from changelog", again.stderr)]
    assert len(restored) == pipeline.topics.payments_partitions and sum(restored) >= len(accounts), again.stderr[-3000:]
    assert "rebuilt the state" not in again.stderr

    decided = routed(pipeline)
    assert not any(decided[p.payment_id or ""][0] for p in first + third)
    for p in fourth:
        fraud, decision = decided[p.payment_id or ""]
        assert fraud, f"4th payment of {p.account} not flagged: {decision}"
        assert decision["rules"][0]["reason"] == f"count=4 in 120s > 3 (ACCOUNT={p.account})"


def test_velocity_state_follows_a_partition_to_a_second_detector(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path
) -> None:
    rules = tmp_path / "burst.yaml"
    rules.write_text(BURST_RULES)
    accounts = [f"ACC-B{n:02d}" for n in range(12)]
    # Stopped by the test once every payment is routed, not by an idle timeout: the first detector waits, idle, while
    # the second starts and joins, which took more than 10 s on a loaded machine (the first had idled out).
    args = ("--rules", str(rules), "--idle-timeout", "300", "--quiet", "--guarantee", "at-least-once")
    # Two machines: each detector its own state folder, so the second restores what it takes over from the changelog.
    first_detector = pipeline.start("fraud_detector", *args, "--state-dir", str(tmp_path / "a"), group="shared")
    second_detector = None
    try:
        wait_for_group(pipeline.bootstrap, pipeline.group("shared"), 1, first_detector)
        early = [payment(a) for a in accounts for _ in range(3)]
        send(raw_producer, pipeline.topics.payments, early)
        wait_routed(pipeline, len(early))
        # The second detector takes over half of the partitions, and with them accounts it never saw.
        second_detector = pipeline.start("fraud_detector", *args, "--state-dir", str(tmp_path / "b"), group="shared")
        wait_for_group(pipeline.bootstrap, pipeline.group("shared"), 2, first_detector, second_detector)
        late = [payment(a) for a in accounts]
        send(raw_producer, pipeline.topics.payments, late)
        decided = wait_routed(pipeline, len(early) + len(late))
    finally:
        running = [proc for proc in (first_detector, second_detector) if proc is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=90) for proc in running]
    handled = [summary_count(stderr, "fraud_detector") for _, stderr in outputs]
    assert len(handled) == 2 and handled[1] > 0, f"the second detector got no payments: {handled}"
    moved = [int(n) for n in re.findall(r"partition \d+ ready: (\d+) change\(s\) from changelog", outputs[1][1])]
    assert moved and sum(moved) > 0, outputs[1][1][-3000:]
    # Each payment sent was routed once, across the rebalance: none lost, none twice.
    routed_ids = Counter(json.loads(r.value)["PAYMENT_ID"] for topic in (pipeline.topics.fraud, pipeline.topics.legit)
                         for r in read_topic(pipeline.bootstrap, topic))
    assert routed_ids == Counter(p.payment_id for p in early + late)
    assert sum(handled) == len(early) + len(late)
    assert not any(decided[p.payment_id or ""][0] for p in early)
    for p in late:
        fraud, decision = decided[p.payment_id or ""]
        assert fraud, f"4th payment of {p.account} not flagged: {decision}"
        assert decision["rules"][0]["reason"] == f"count=4 in 120s > 3 (ACCOUNT={p.account})"


DAY_RULES = """\
threshold: 1
rules:
  - id: day-total
    description: more than 1,000 in a day from one account
    aggregate: {function: sum, field: AMOUNT, group_by: ACCOUNT, window_s: 86400, op: ">", value: 1000}
"""


def made_changelog(pipeline: Pipeline, group: str, partitions: int, configs: dict[str, str]) -> str:
    """Create the changelog a detector of ``group`` with rules over the account would make, as given; its name."""
    name = changelog_topic(pipeline.group(group), pipeline.topics.payments)
    admin = KafkaAdminClient(**kafka_python_connection(pipeline.bootstrap))
    try:
        admin.create_topics([NewTopic(name, partitions, 3, topic_configs=configs)])
    finally:
        admin.close()
    return name


def refused(pipeline: Pipeline, group: str, rules: Path, state: Path) -> str:
    """Start a detector that must refuse to run: its exit status non-zero, within 60 s; what it printed."""
    done = subprocess.run(pipeline.command("fraud_detector", "--rules", str(rules), "--state-dir", str(state), group=group),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0, done.stderr[-3000:]
    return done.stderr


def test_a_changelog_with_another_partition_count_than_its_input_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    """Each changelog partition holds the state of the input partition of its number: a changelog laid out otherwise
    (the input re-partitioned since) stops the detector at start, saying what to do."""
    rules = tmp_path / "day.yaml"
    rules.write_text(DAY_RULES)
    name = made_changelog(pipeline, "relaid", 3, {"cleanup.policy": "compact"})
    stderr = refused(pipeline, "relaid", rules, tmp_path / "state")
    assert f"changelog {name} has 3 partitions but its input {pipeline.topics.payments} has 6" in stderr, stderr[-3000:]
    assert f"delete {name} and the detectors' state folders" in stderr


def test_a_window_longer_than_the_changelog_keeps_is_refused_at_start_and_when_published(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path,
) -> None:
    """A changelog that deletes records after an hour cannot hold a day's window: a detector started with a day's rule
    refuses to run; one started with an hour's rule runs, and a day's rule published to it is rejected (on the rejected
    rules topic, with the reason), the running set unchanged."""
    day = tmp_path / "day.yaml"
    day.write_text(DAY_RULES)
    name = made_changelog(pipeline, "short", 6, {"cleanup.policy": "compact,delete", "retention.ms": "3600000"})
    stderr = refused(pipeline, "short", day, tmp_path / "state")
    assert f"its window of 86400s is longer than topic {name} keeps (retention.ms=3600000)" in stderr, stderr[-3000:]

    hour = tmp_path / "hour.yaml"
    hour.write_text(DAY_RULES.replace("window_s: 86400", "window_s: 1800").replace("in a day", "in half an hour"))
    detector = pipeline.start("fraud_detector", "--rules", str(hour), "--state-dir", str(tmp_path / "state"),
                              "--idle-timeout", "6", "--quiet", group="short")
    try:
        wait_for_group(pipeline.bootstrap, pipeline.group("short"), 1, detector)
        rule = {"id": "day-total", "description": "a day's total",
                "aggregate": {"function": "sum", "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 86400, "op": ">",
                              "value": 1000}}
        raw_producer.send(pipeline.topics.rules, key=b"day-total", value=json.dumps(rule).encode())
        raw_producer.flush()
        deadline = time.monotonic() + 30
        while "rejected rule record" not in detector.stderr_so_far():
            assert detector.poll() is None and time.monotonic() < deadline, detector.stderr_so_far()[-3000:]
            time.sleep(0.2)
    finally:
        _, stderr = detector.communicate(timeout=60)
    assert detector.returncode == 0, stderr[-3000:]
    rejected = read_topic(pipeline.bootstrap, pipeline.topics.rules_rejected)
    errors = {r.key: dict(r.headers)["error"].decode() for r in rejected}
    assert set(errors) == {b"day-total"}
    assert f"its window of 86400s is longer than topic {name} keeps" in errors[b"day-total"]
