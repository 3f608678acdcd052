"""The four scripts on the real 3-broker cluster."""

from __future__ import annotations

import datetime
import json
import random
import signal
import threading
import time
from collections import Counter

import pytest
import pytz
from kafka import KafkaProducer

from fraud_pipeline.clients import CONFLUENT, KAFKA_PYTHON, backend
from fraud_pipeline.payment import Payment, generate
from fraud_pipeline.processors import fraud_line, legit_line
from tests.integration.conftest import Pipeline, read_topic, summary_count, wait_for_committed, wait_for_group

pytestmark = pytest.mark.integration

SEED = 42
COUNT = 2000
ACCOUNTS = 100


def expected_payments(seed: int, count: int, accounts: int) -> list[Payment]:
    """What the producer sends for a seed (the time fields aside)."""
    rng = random.Random(seed)
    now = datetime.datetime.now(pytz.utc)
    return [generate(rng, now, accounts) for _ in range(count)]


def ids(records: list) -> list[str]:  # type: ignore[type-arg]
    return [json.loads(r.value)["PAYMENT_ID"] for r in records]


def test_seeded_payments_flow_through_detector_and_processors(pipeline: Pipeline) -> None:
    check_seeded_flow(pipeline)


def check_seeded_flow(pipeline: Pipeline) -> None:
    """2000 seeded payments through the four scripts: exact counts, printed lines, nothing twice (also run over SASL_SSL)."""
    expected = expected_payments(SEED, COUNT, ACCOUNTS)
    fraud_ids = {p.payment_id for p in expected if p.payment_type == "BITCOIN"}
    legit_ids = {p.payment_id for p in expected if p.payment_type != "BITCOIN"}
    assert 0 < len(fraud_ids) < COUNT

    produced = pipeline.run(
        "payment_producer", "--count", str(COUNT), "--rate", "0", "--seed", str(SEED), "--accounts", str(ACCOUNTS), "--quiet"
    )
    assert produced.stdout == ""
    payments = read_topic(pipeline.bootstrap, pipeline.topics.payments)
    assert sorted(ids(payments)) == sorted(p.payment_id for p in expected)  # type: ignore[type-var]
    # keyed by sender account
    assert all(r.key == json.loads(r.value)["ACCOUNT"].encode() for r in payments)

    detected = pipeline.run("fraud_detector", "--idle-timeout", "5", group="detector")
    assert summary_count(detected.stderr, "fraud_detector") == COUNT
    detector_lines = Counter(detected.stdout.splitlines())
    assert detector_lines == Counter(
        {f"{pipeline.topics.fraud} True BITCOIN": len(fraud_ids)}
        | {f"{pipeline.topics.legit} False {t}": sum(p.payment_type == t for p in expected) for t in ("VISA", "MASTERCARD")}
    )

    fraud = read_topic(pipeline.bootstrap, pipeline.topics.fraud)
    legit = read_topic(pipeline.bootstrap, pipeline.topics.legit)
    assert len(fraud) == len(fraud_ids) and set(ids(fraud)) == fraud_ids
    assert len(legit) == len(legit_ids) and set(ids(legit)) == legit_ids
    assert read_topic(pipeline.bootstrap, pipeline.topics.dead_letter) == []
    # records in = fraud + legit + dead-lettered
    assert len(payments) == len(fraud) + len(legit)

    by_id = {p.payment_id: p for p in expected}
    fraud_out = pipeline.run("fraud_processor", "--idle-timeout", "5", group="fraud-processor")
    legit_out = pipeline.run("legit_processor", "--idle-timeout", "5", group="legit-processor")
    reasons = "    score 1 >= 1: bitcoin@1: PAYMENT_TYPE == BITCOIN"
    assert Counter(fraud_out.stdout.splitlines()) == Counter(fraud_line(by_id[i]) for i in fraud_ids) + Counter({reasons: len(fraud_ids)})
    assert Counter(legit_out.stdout.splitlines()) == Counter(legit_line(by_id[i]) for i in legit_ids)
    assert summary_count(fraud_out.stderr, "fraud_processor") == len(fraud_ids)

    # A restarted detector resumes from the group's committed offsets: it re-reads nothing.
    again = pipeline.run("fraud_detector", "--idle-timeout", "3", group="detector")
    assert summary_count(again.stderr, "fraud_detector") == 0
    assert again.stdout == ""
    assert len(read_topic(pipeline.bootstrap, pipeline.topics.fraud)) == len(fraud_ids)
    assert len(read_topic(pipeline.bootstrap, pipeline.topics.legit)) == len(legit_ids)


def test_original_messages_and_bad_records(pipeline: Pipeline, raw_producer: KafkaProducer) -> None:
    original = {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "BITCOIN", "AMOUNT": 42, "TO": "stranger"}
    good = json.dumps(original).encode("utf-8")
    bad = {
        b"\xff\xfenot utf-8": "not UTF-8",
        b"{broken json": "not JSON",
        json.dumps({**original, "AMOUNT": -3}).encode(): "AMOUNT must be >= 0",
        json.dumps({**original, "PAYMENT_TYPE": "AMEX"}).encode(): "unknown PAYMENT_TYPE",
        json.dumps({k: v for k, v in original.items() if k != "TO"}).encode(): "missing field TO",
    }
    raw_producer.send(pipeline.topics.payments, value=good)
    for value in bad:
        raw_producer.send(pipeline.topics.payments, key=b"bad-key", value=value)
    raw_producer.send(pipeline.topics.payments, value=json.dumps({**original, "PAYMENT_TYPE": "VISA", "TO": "mom"}).encode())
    raw_producer.flush()

    detected = pipeline.run("fraud_detector", "--idle-timeout", "5", group="detector")
    assert summary_count(detected.stderr, "fraud_detector") == 2 + len(bad)
    assert detected.stderr.count("rejected ") == len(bad)

    fraud = read_topic(pipeline.bootstrap, pipeline.topics.fraud)
    legit = read_topic(pipeline.bootstrap, pipeline.topics.legit)
    dead = read_topic(pipeline.bootstrap, pipeline.topics.dead_letter)
    # forwarded byte for byte, with the decision appended
    assert [r.value[: len(good) - 1] for r in fraud] == [good[:-1]]
    assert json.loads(fraud[0].value) == original | {"DECISION": json.loads(fraud[0].value)["DECISION"]}
    assert dict(fraud[0].headers)["decision"] == b"fraud score=1 rules=bitcoin@1"
    assert len(legit) == 1
    assert len(dead) == len(bad)
    for record in dead:
        headers = dict(record.headers)
        assert record.key == b"bad-key"
        assert bad[record.value] in headers["error"].decode()
        assert headers["source.topic"].decode() == pipeline.topics.payments
        assert int(headers["source.offset"]) >= 0
    assert 2 + len(bad) == len(fraud) + len(legit) + len(dead)

    fraud_out = pipeline.run("fraud_processor", "--idle-timeout", "5", group="fraud-processor")
    assert fraud_out.stdout == (
        "[ALERT] fraud detected payment to: stranger - 42\n    score 1 >= 1: bitcoin@1: PAYMENT_TYPE == BITCOIN\n"
    )
    legit_out = pipeline.run("legit_processor", "--idle-timeout", "5", group="legit-processor")
    assert legit_out.stdout == "[VISA] payment to: mom - 42\n"


def test_two_detectors_in_one_group_share_the_partitions(pipeline: Pipeline) -> None:
    count = 3000
    # No idle timeout: on a loaded machine the producer's start can outlast one, and an idle member leaving
    # would hand its partitions to the other. Both are stopped once the group has committed every payment.
    first = pipeline.start("fraud_detector", "--quiet", group="shared")
    second = pipeline.start("fraud_detector", "--quiet", group="shared")
    wait_for_group(pipeline.bootstrap, pipeline.group("shared"), 2, first, second)
    pipeline.run("payment_producer", "--count", str(count), "--rate", "0", "--seed", "7", "--quiet")
    wait_for_committed(pipeline.bootstrap, pipeline.group("shared"), pipeline.topics.payments, count)
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
    outputs = [proc.communicate(timeout=60) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    handled = [summary_count(stderr, "fraud_detector") for _, stderr in outputs]
    assert all(n > 0 for n in handled), f"one detector got no partitions: {handled}"
    routed = read_topic(pipeline.bootstrap, pipeline.topics.fraud) + read_topic(pipeline.bootstrap, pipeline.topics.legit)
    routed_ids = Counter(ids(routed))
    sent_ids = {p.payment_id for p in expected_payments(7, count, 1000)}
    assert set(routed_ids) == sent_ids, "payments lost, or ids never sent"
    assert routed_ids.most_common(1)[0][1] == 1, f"payments routed twice: {[i for i, n in routed_ids.items() if n > 1][:5]}"
    assert sum(handled) == count


def test_mixed_clients_kafka_python_and_confluent_in_one_pipeline(pipeline: Pipeline) -> None:
    """Producer and processors on one client, the detector on the other: the records and lines are the same."""
    detector_client = CONFLUENT if pipeline.client == KAFKA_PYTHON else KAFKA_PYTHON
    expected = expected_payments(SEED, COUNT, ACCOUNTS)
    by_id = {p.payment_id: p for p in expected}
    fraud_ids = {p.payment_id for p in expected if p.payment_type == "BITCOIN"}
    pipeline.run("payment_producer", "--count", str(COUNT), "--rate", "0", "--seed", str(SEED), "--accounts", str(ACCOUNTS), "--quiet")
    detected = pipeline.run("fraud_detector", "--idle-timeout", "5", group="detector", client=detector_client)
    assert f"with {detector_client}" in detected.stderr
    assert summary_count(detected.stderr, "fraud_detector") == COUNT
    fraud = read_topic(pipeline.bootstrap, pipeline.topics.fraud)
    legit = read_topic(pipeline.bootstrap, pipeline.topics.legit)
    assert sorted(ids(fraud)) == sorted(fraud_ids)  # type: ignore[type-var]
    assert len(legit) == COUNT - len(fraud_ids) and len(set(ids(legit))) == len(legit)
    assert all(dict(r.headers)["decision"] == b"fraud score=1 rules=bitcoin@1" for r in fraud)
    fraud_out = pipeline.run("fraud_processor", "--idle-timeout", "5", "--no-reasons", group="fraud-processor")
    legit_out = pipeline.run("legit_processor", "--idle-timeout", "5", group="legit-processor")
    assert Counter(fraud_out.stdout.splitlines()) == Counter(fraud_line(by_id[i]) for i in fraud_ids)
    assert Counter(legit_out.stdout.splitlines()) == Counter(legit_line(by_id[i]) for i in ids(legit))


def test_a_record_is_noted_acknowledged_only_once_the_brokers_have_it(pipeline: Pipeline) -> None:
    """``Producer.watch_next_acknowledgement``, what the transaction trace's "first record acknowledged" rests on
    (the kill tests count a kill only after it): once noted, a read_uncommitted reader sees the open transaction's
    record and a read_committed one does not; aborted, it stays invisible to the second."""
    producer = backend(pipeline.client, tuple(pipeline.bootstrap.split(","))).producer(
        "ack-watch", f"ack-watch-{pipeline.suffix}", each_acknowledgement=True)
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        noted = threading.Event()
        producer.watch_next_acknowledgement(noted.set)
        producer.send(pipeline.topics.fraud, b"k", b"watched", partition=0)
        deadline = time.monotonic() + 30
        while not noted.is_set():  # as the detector's loop does: its sends and settles serve the reports
            assert time.monotonic() < deadline, "the acknowledgement was never noted"
            producer.settled()
            time.sleep(0.01)
        assert [r.value for r in read_topic(pipeline.bootstrap, pipeline.topics.fraud, committed_only=False)] == [b"watched"]
        assert read_topic(pipeline.bootstrap, pipeline.topics.fraud) == []
        producer.abort_transaction(30)
        assert read_topic(pipeline.bootstrap, pipeline.topics.fraud) == []
    finally:
        producer.close(5)
