"""The detector, processors, producer and consume loop with mocked kafka-python clients."""

from __future__ import annotations

import io
import itertools
import json
import threading
from unittest.mock import MagicMock

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError
from kafka.structs import TopicPartition

from fraud_pipeline.config import Settings, TopicSettings
from fraud_pipeline.detector import Detector
from fraud_pipeline.kafka_io import DeadLetters, DeliveryTracker, run_consumer
from fraud_pipeline.processors import Processor, fraud_line, legit_line
from fraud_pipeline.producer import produce
from fraud_pipeline.runtime import PipelineError, Summary
from tests.unit.records import record

SETTINGS = Settings(bootstrap_servers=("localhost:9091",), topics=TopicSettings())


def value(payment_type: str = "BITCOIN", to: str = "stranger", amount: int = 42) -> bytes:
    return json.dumps(
        {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": payment_type, "AMOUNT": amount, "TO": to}
    ).encode()


def make_detector(quiet: bool = False) -> tuple[Detector, MagicMock, io.StringIO, Summary, DeliveryTracker]:
    producer = MagicMock(spec_set=KafkaProducer)
    tracker = DeliveryTracker()
    summary = Summary("fraud_detector", "payments")
    out = io.StringIO()
    settings = Settings(bootstrap_servers=SETTINGS.bootstrap_servers, topics=SETTINGS.topics, quiet=quiet)
    dead = DeadLetters(producer, "payments_dlq", "fraud_detector", tracker)
    return Detector(producer, settings, dead, tracker, summary, out), producer, out, summary, tracker


def test_detector_routes_forwards_bytes_and_prints_the_original_line() -> None:
    detector, producer, out, summary, _ = make_detector()
    detector.handle(record(value("BITCOIN"), key=b"ACC1"))
    detector.handle(record(value("VISA"), key=b"ACC2", offset=1))
    assert out.getvalue() == "fraud_payments True BITCOIN\nlegit_payments False VISA\n"
    sends = producer.send.call_args_list
    assert sends[0].args == ("fraud_payments",) and sends[0].kwargs == {"key": b"ACC1", "value": value("BITCOIN")}
    assert sends[1].args == ("legit_payments",) and sends[1].kwargs == {"key": b"ACC2", "value": value("VISA")}
    assert summary.counts == {"fraud_payments": 1, "legit_payments": 1}


def test_detector_quiet_prints_nothing() -> None:
    detector, producer, out, summary, _ = make_detector(quiet=True)
    detector.handle(record(value()))
    assert out.getvalue() == ""
    assert producer.send.call_count == 1 and summary.total == 1


def test_bad_record_goes_to_dead_letters_unchanged_with_headers(caplog: pytest.LogCaptureFixture) -> None:
    detector, producer, out, summary, _ = make_detector()
    detector.handle(record(b"\x00garbage", key=b"K", partition=3, offset=17))
    assert out.getvalue() == ""
    (call,) = producer.send.call_args_list
    assert call.args == ("payments_dlq",)
    assert call.kwargs["key"] == b"K" and call.kwargs["value"] == b"\x00garbage"
    headers = dict(call.kwargs["headers"])
    assert headers["error"].startswith(b"not JSON")
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (b"payments", b"3", b"17")
    assert headers["rejected.by"] == b"fraud_detector" and int(headers["rejected.at.ms"]) > 0
    assert summary.counts == {"dead-lettered": 1}
    assert "rejected payments[3]@17: not JSON" in caplog.text


def test_a_failed_send_fails_the_batch_flush() -> None:
    detector, producer, _, _, tracker = make_detector()
    detector.handle(record(value()))
    tracker.on_error(RuntimeError("broker gone"))
    with pytest.raises(PipelineError, match="broker gone"):
        detector.flush()
    producer.flush.assert_called_once()


@pytest.mark.parametrize(
    ("line", "payment_type", "to", "expected", "outcome"),
    [
        (fraud_line, "BITCOIN", "stranger", "[ALERT] fraud detected payment to: stranger - 42", "ALERT"),
        (fraud_line, "BITCOIN", "mom", "[PROCESSING BITCOIN] payment to: mom - 42", "PROCESSING BITCOIN"),
        (legit_line, "VISA", "me", "[VISA] payment to: me - 42", "VISA"),
        (legit_line, "AMEX", "me", "[ALERT] unable to process payments", "ALERT"),
    ],
)
def test_processor_prints_and_counts(line, payment_type: str, to: str, expected: str, outcome: str) -> None:  # type: ignore[no-untyped-def]
    producer = MagicMock(spec_set=KafkaProducer)
    tracker = DeliveryTracker()
    summary = Summary("p", "payments")
    out = io.StringIO()
    processor = Processor(line, DeadLetters(producer, "dlq", "p", tracker), tracker, summary, False, producer, out)
    processor.handle(record(value(payment_type, to), topic="fraud_payments"))
    processor.handle(record(b'{"DATE": "01/22/2023"}', topic="fraud_payments", offset=1))
    processor.flush()
    assert out.getvalue() == expected + "\n"
    assert summary.counts == {outcome: 1, "dead-lettered": 1}
    assert producer.send.call_args.args == ("dlq",)
    assert dict(producer.send.call_args.kwargs["headers"])["error"] == b"missing field TIME"


def test_producer_sends_keyed_payments_and_prints_the_original_dict() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    out = io.StringIO()
    settings = Settings(bootstrap_servers=("x:1",), topics=TopicSettings(payments="pay"), count=25, rate=0, seed=9)
    summary = Summary("payment_producer", "payments sent")
    assert produce(producer, settings, threading.Event(), summary, out) == "count reached"
    assert producer.send.call_count == 25 and summary.total == 25
    lines = out.getvalue().splitlines()
    for call, line in zip(producer.send.call_args_list, lines, strict=True):
        data = json.loads(call.kwargs["value"])
        assert call.args == ("pay",)
        assert call.kwargs["key"] == data["ACCOUNT"].encode()
        assert line == repr({k: data[k] for k in ("DATE", "TIME", "PAYMENT_TYPE", "AMOUNT", "TO")})
    producer.flush.assert_called_once()


def test_producer_stops_when_asked() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    stop = threading.Event()
    stop.set()
    settings = Settings(bootstrap_servers=("x:1",), topics=TopicSettings(), count=None, rate=1, quiet=True)
    assert produce(producer, settings, stop, Summary("p", "payments"), io.StringIO()) == "stopped"
    producer.send.assert_not_called()


def _consumer_with(*batches: dict) -> MagicMock:  # type: ignore[type-arg]
    consumer = MagicMock(spec_set=KafkaConsumer)
    consumer.poll.side_effect = itertools.chain(batches, itertools.repeat({}))
    return consumer


def test_consume_loop_commits_only_after_the_batch_is_flushed() -> None:
    tp = TopicPartition("payments", 0)
    consumer = _consumer_with({tp: [record(b"a"), record(b"b", offset=1)]}, {tp: [record(b"c", offset=2)]})
    events: list[str] = []
    consumer.commit.side_effect = lambda *a, **k: events.append("commit")
    reason = run_consumer(
        consumer, lambda r: events.append(r.value.decode()), stop=threading.Event(), idle_timeout_s=0.05,
        before_commit=lambda: events.append("flush"),
    )
    assert reason == "idle timeout"
    assert events == ["a", "b", "flush", "commit", "c", "flush", "commit"]


def test_consume_loop_does_not_commit_when_the_flush_fails() -> None:
    tp = TopicPartition("payments", 0)
    consumer = _consumer_with({tp: [record(b"a")]})

    def fail() -> None:
        raise PipelineError("send failed")

    with pytest.raises(PipelineError):
        run_consumer(consumer, lambda r: None, stop=threading.Event(), idle_timeout_s=1, before_commit=fail)
    consumer.commit.assert_not_called()


def test_consume_loop_survives_a_commit_lost_to_a_rebalance() -> None:
    tp = TopicPartition("payments", 0)
    consumer = _consumer_with({tp: [record(b"a")]}, {tp: [record(b"b", offset=1)]})
    consumer.commit.side_effect = [CommitFailedError("rebalanced"), None]
    seen: list[bytes] = []
    run_consumer(consumer, lambda r: seen.append(r.value), stop=threading.Event(), idle_timeout_s=0.05, before_commit=lambda: None)
    assert seen == [b"a", b"b"] and consumer.commit.call_count == 2


def test_consume_loop_stops_on_the_stop_event() -> None:
    consumer = _consumer_with()
    stop = threading.Event()
    stop.set()
    assert run_consumer(consumer, lambda r: None, stop=stop, idle_timeout_s=None, before_commit=lambda: None) == "stopped"


def test_a_stalled_rebalance_is_restarted_after_a_failed_commit() -> None:
    from kafka.errors import RebalanceInProgressError

    tp = TopicPartition("payments", 0)
    consumer = MagicMock()  # reaches into the client's coordinator: no spec for private parts
    consumer.poll.side_effect = itertools.chain([{tp: [record(b"a")]}], itertools.repeat({}))
    consumer.commit.side_effect = RebalanceInProgressError("stalled")
    consumer._coordinator.rebalance_in_progress.return_value = True
    consumer._coordinator.need_rejoin.return_value = False
    run_consumer(consumer, lambda r: None, stop=threading.Event(), idle_timeout_s=0.05, before_commit=lambda: None)
    consumer._coordinator.request_rejoin.assert_called_once()
