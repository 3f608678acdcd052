"""The detector, processors, producer and consume loop with mocked kafka-python clients."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from typing import Any
from unittest.mock import MagicMock

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    CommitFailedError,
    KafkaTimeoutError,
    ProducerFencedError,
    RebalanceInProgressError,
    TransactionalIdAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from fraud_pipeline.config import Settings, TopicSettings
from fraud_pipeline.detector import Detector
from fraud_pipeline.kafka_io import BatchError, DeadLetters, Output
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.processors import Processor, fraud_line, legit_line
from fraud_pipeline.producer import produce
from fraud_pipeline.rules import ORIGINAL
from fraud_pipeline.runtime import PipelineError, Summary
from fraud_pipeline.stage import AtLeastOnce, ExactlyOnce, LineBuffer, run_consumer
from tests.unit.records import record

SETTINGS = Settings(bootstrap_servers=("localhost:9091",), topics=TopicSettings())
TP = TopicPartition("payments", 0)


def value(payment_type: str = "BITCOIN", to: str = "stranger", amount: int = 42) -> bytes:
    return json.dumps(
        {"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": payment_type, "AMOUNT": amount, "TO": to}
    ).encode()


class Rig:
    """A detector wired to a mocked producer, printing into a buffer."""

    def __init__(self, quiet: bool = False) -> None:
        self.producer = MagicMock(spec_set=KafkaProducer)
        self.producer.partitions_for.return_value = {0, 1}  # the routed topics' partitions
        self.output = Output(self.producer)
        self.summary = Summary("fraud_detector", "payments")
        self.out = io.StringIO()
        self.lines = LineBuffer(self.summary, quiet, self.out)
        dead = DeadLetters(self.output, "payments_dlq", "fraud_detector")
        rules = LiveRules(ORIGINAL, None, lambda record, reason: None)
        self.detector = Detector(self.output, SETTINGS, dead, self.lines, rules, lambda *span: iter(()))


def test_detector_routes_forwards_bytes_with_its_decision_and_prints_the_original_line() -> None:
    rig = Rig()
    rig.detector.handle(record(value("BITCOIN"), key=b"ACC1"))
    rig.detector.handle(record(value("VISA"), key=b"ACC2", offset=1))
    assert rig.out.getvalue() == ""  # nothing is printed before the batch is durable
    rig.detector.emit()
    assert rig.out.getvalue() == "fraud_payments True BITCOIN\nlegit_payments False VISA\n"
    fraud, legit = rig.producer.send.call_args_list
    assert fraud.args == ("fraud_payments",) and fraud.kwargs["key"] == b"ACC1"
    assert fraud.kwargs["partition"] == 0  # input partition 0 of 6 -> 0 of 2
    assert legit.args == ("legit_payments",) and legit.kwargs["key"] == b"ACC2"
    # the input bytes, then the decision appended to the object
    assert fraud.kwargs["value"].startswith(value("BITCOIN")[:-1] + b', "DECISION": ')
    assert json.loads(fraud.kwargs["value"])["DECISION"] == {
        "fraud": True, "score": 1.0, "threshold": 1.0,
        "rules": [{"id": "bitcoin", "version": 1, "mode": "enabled", "weight": 1.0, "reason": "PAYMENT_TYPE == BITCOIN"}],
    }
    assert json.loads(legit.kwargs["value"])["DECISION"] == {"fraud": False, "score": 0.0, "threshold": 1.0, "rules": []}
    assert fraud.kwargs["headers"] == [("decision", b"fraud score=1 rules=bitcoin@1")]
    assert legit.kwargs["headers"] == [("decision", b"legit score=0")]
    assert rig.summary.counts == {"fraud_payments": 1, "legit_payments": 1}


def test_a_discarded_batch_prints_and_counts_nothing() -> None:
    rig = Rig()
    rig.detector.handle(record(value()))
    rig.detector.discard()
    rig.detector.emit()
    assert rig.out.getvalue() == "" and rig.summary.total == 0


def test_detector_quiet_prints_nothing() -> None:
    rig = Rig(quiet=True)
    rig.detector.handle(record(value()))
    rig.detector.emit()
    assert rig.out.getvalue() == ""
    assert rig.producer.send.call_count == 1 and rig.summary.total == 1


def test_bad_record_goes_to_dead_letters_unchanged_with_headers(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.detector.handle(record(b"\x00garbage", key=b"K", partition=3, offset=17))
    rig.detector.emit()
    assert rig.out.getvalue() == ""
    (sent,) = rig.producer.send.call_args_list
    assert sent.args == ("payments_dlq",)
    assert sent.kwargs["key"] == b"K" and sent.kwargs["value"] == b"\x00garbage"
    headers = dict(sent.kwargs["headers"])
    assert headers["error"].startswith(b"not JSON")
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (b"payments", b"3", b"17")
    assert headers["rejected.by"] == b"fraud_detector" and int(headers["rejected.at.ms"]) > 0
    assert rig.summary.counts == {"dead-lettered": 1}
    assert "rejected payments[3]@17: not JSON" in caplog.text


def test_a_record_with_neither_key_nor_value_is_dead_lettered() -> None:
    rig = Rig()
    rig.detector.handle(record(None, key=None))
    (sent,) = rig.producer.send.call_args_list
    assert sent.kwargs["value"] == b"" and sent.kwargs["key"] is None
    headers = dict(sent.kwargs["headers"])
    assert headers["value.null"] == b"true" and headers["error"] == b"empty record (no value)"


def test_a_failed_send_fails_the_flush() -> None:
    rig = Rig()
    rig.detector.handle(record(value()))
    errback, *bound = rig.producer.send.return_value.add_errback.call_args.args
    errback(*bound, RuntimeError("broker gone"))  # as kafka-python calls it: bound args, then the error
    with pytest.raises(BatchError, match="broker gone"):
        rig.output.flush()
    rig.producer.flush.assert_called_once()


@pytest.mark.parametrize(
    ("line", "payment_type", "to", "expected", "outcome"),
    [
        (fraud_line, "BITCOIN", "stranger", "[ALERT] fraud detected payment to: stranger - 42", "ALERT"),
        (fraud_line, "BITCOIN", "mom", "[PROCESSING BITCOIN] payment to: mom - 42", "PROCESSING BITCOIN"),
        (legit_line, "VISA", "me", "[VISA] payment to: me - 42", "VISA"),
        (legit_line, "AMEX", "me", "[ALERT] unable to process payments", "ALERT"),
    ],
)
def test_processor_prints_and_counts(line: Any, payment_type: str, to: str, expected: str, outcome: str) -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    summary = Summary("p", "payments")
    out = io.StringIO()
    processor = Processor(line, DeadLetters(Output(producer), "dlq", "p"), LineBuffer(summary, False, out))
    processor.handle(record(value(payment_type, to), topic="fraud_payments"))
    processor.handle(record(b'{"DATE": "01/22/2023"}', topic="fraud_payments", offset=1))
    processor.emit()
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
    for sent, line in zip(producer.send.call_args_list, lines, strict=True):
        data = json.loads(sent.kwargs["value"])
        assert sent.args == ("pay",)
        assert sent.kwargs["key"] == data["ACCOUNT"].encode()
        assert line == repr({k: data[k] for k in ("DATE", "TIME", "PAYMENT_TYPE", "AMOUNT", "TO")})
    producer.flush.assert_called_once()


def test_producer_labels_scenario_payments_in_headers_only() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    settings = Settings(bootstrap_servers=("x:1",), topics=TopicSettings(), count=3000, rate=0, seed=5, quiet=True,
                        scenarios="large-to-stranger=0.05")
    produce(producer, settings, threading.Event(), Summary("p", "payments"), io.StringIO())
    sends = producer.send.call_args_list
    labels = [dict(sent.kwargs["headers"]) for sent in sends]
    assert len(sends) == 3000 and all(set(h) == {"fraud.label", "fraud.scenario"} for h in labels)
    frauds = [json.loads(sent.kwargs["value"]) for sent, h in zip(sends, labels, strict=True) if h["fraud.label"] == b"fraud"]
    assert 100 < len(frauds) < 200  # about 5 % of the base payments start one
    assert all(f["TO"] == "stranger" and f["AMOUNT"] >= 500 for f in frauds)
    assert all("label" not in k.lower() for sent in sends for k in json.loads(sent.kwargs["value"]))


def test_producer_stops_at_the_first_failed_send() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    producer.send.return_value.add_errback.side_effect = lambda errback, *bound: errback(*bound, KafkaTimeoutError("no leader"))
    settings = Settings(bootstrap_servers=("x:1",), topics=TopicSettings(), count=10, rate=0, quiet=True)
    with pytest.raises(BatchError, match="no leader"):
        produce(producer, settings, threading.Event(), Summary("p", "payments"), io.StringIO())
    assert producer.send.call_count == 1


def test_producer_stops_when_asked() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    stop = threading.Event()
    stop.set()
    settings = Settings(bootstrap_servers=("x:1",), topics=TopicSettings(), count=None, rate=1, quiet=True)
    assert produce(producer, settings, stop, Summary("p", "payments"), io.StringIO()) == "stopped"
    producer.send.assert_not_called()


def _consumer_with(*batches: dict, spec: bool = True) -> MagicMock:  # type: ignore[type-arg]
    consumer = MagicMock(spec_set=KafkaConsumer) if spec else MagicMock()
    consumer.poll.side_effect = itertools.chain(batches, itertools.repeat({}))
    consumer.assignment.return_value = {TP}
    consumer.committed.return_value = None  # the group has committed nothing yet
    return consumer


class Recorder:
    """A RecordHandler that logs what happens to it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def begin_batch(self, batch: Any) -> None:
        pass

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.events.append(f"assigned {sorted(partitions)}")

    def handle(self, record: Any) -> None:
        self.events.append(record.value.decode())

    def emit(self) -> None:
        self.events.append("emit")

    def discard(self) -> None:
        self.events.append("discard")


def test_at_least_once_flushes_prints_then_commits_the_next_offsets() -> None:
    consumer = _consumer_with({TP: [record(b"a"), record(b"b", offset=1)]}, {TP: [record(b"c", offset=2)]})
    producer = MagicMock(spec_set=KafkaProducer)
    events: list[str] = []
    producer.flush.side_effect = lambda *a, **k: events.append("flush")
    consumer.commit.side_effect = lambda offsets: events.append(f"commit {offsets[TP].offset}")
    reason = run_consumer(consumer, Recorder(events), AtLeastOnce(Output(producer)), stop=threading.Event(), idle_timeout_s=0.05)
    assert reason == "idle timeout"
    assert events == ["a", "b", "flush", "emit", "commit 2", "c", "flush", "emit", "commit 3"]


def test_a_failed_batch_is_rolled_back_rewound_and_read_again() -> None:
    consumer = _consumer_with({TP: [record(b"a", offset=5)]}, {TP: [record(b"a", offset=5)]})
    producer = MagicMock(spec_set=KafkaProducer)
    output = Output(producer)
    events: list[str] = []
    producer.flush.side_effect = [None, None]
    original_flush = output.flush
    failures = iter([BatchError("send failed"), None])

    def flaky_flush() -> None:
        original_flush()
        exc = next(failures)
        if exc:
            raise exc

    output.flush = flaky_flush  # type: ignore[method-assign]
    stop = threading.Event()
    run_consumer(consumer, Recorder(events), AtLeastOnce(output), stop=stop, idle_timeout_s=0.05)
    assert events == ["a", "discard", "a", "emit"]
    consumer.seek.assert_called_once_with(TP, 5)
    consumer.commit.assert_called_once_with({TP: OffsetAndMetadata(6, "", -1)})


def test_exactly_once_commits_records_and_offsets_in_one_transaction() -> None:
    consumer = _consumer_with({TP: [record(b"a"), record(b"b", offset=1)]})
    consumer.group_metadata.return_value = "group-meta"
    producer = MagicMock(spec_set=KafkaProducer)
    events: list[str] = []
    for method in ("init_transactions", "begin_transaction", "commit_transaction", "abort_transaction"):
        getattr(producer, method).side_effect = lambda *a, _m=method, **k: events.append(_m)
    producer.send_offsets_to_transaction.side_effect = lambda offsets, meta: events.append(f"offsets {offsets[TP].offset} {meta}")
    delivery = ExactlyOnce(Output(producer), lambda: pytest.fail("no new producer needed"))
    run_consumer(consumer, Recorder(events), delivery, stop=threading.Event(), idle_timeout_s=0.05)
    assert events == ["init_transactions", "begin_transaction", "a", "b", "offsets 2 group-meta", "commit_transaction", "emit"]
    consumer.commit.assert_not_called()


def test_exactly_once_aborts_and_rereads_a_batch_whose_commit_failed() -> None:
    consumer = _consumer_with({TP: [record(b"a", offset=3)]}, {TP: [record(b"a", offset=3)]})
    producer = MagicMock(spec_set=KafkaProducer)
    producer.commit_transaction.side_effect = [CommitFailedError("generation changed"), None]
    events: list[str] = []
    delivery = ExactlyOnce(Output(producer), lambda: pytest.fail("abort worked: no new producer needed"))
    run_consumer(consumer, Recorder(events), delivery, stop=threading.Event(), idle_timeout_s=0.05)
    assert events == ["a", "discard", "a", "emit"]
    producer.abort_transaction.assert_called_once()
    consumer.seek.assert_called_once_with(TP, 3)


def test_a_batch_whose_timed_out_commit_went_through_is_not_read_again() -> None:
    # the commit timed out on our side but completed at the coordinator: the group committed offset 4
    consumer = _consumer_with({TP: [record(b"a", offset=3)]}, {TP: [record(b"b", offset=4)]})
    consumer.committed.return_value = 4
    producer = MagicMock(spec_set=KafkaProducer)
    producer.commit_transaction.side_effect = [KafkaTimeoutError("no answer"), None]
    events: list[str] = []
    run_consumer(consumer, Recorder(events), ExactlyOnce(Output(producer), MagicMock()), stop=threading.Event(), idle_timeout_s=0.05)
    consumer.seek.assert_called_once_with(TP, 4)
    assert events == ["a", "discard", "b", "emit"]


def test_exactly_once_replaces_a_producer_that_cannot_abort() -> None:
    consumer = _consumer_with({TP: [record(b"a")]}, {TP: [record(b"a")]})
    broken = MagicMock(spec_set=KafkaProducer)
    broken.commit_transaction.side_effect = KafkaTimeoutError("coordinator gone")
    broken.abort_transaction.side_effect = KafkaTimeoutError("coordinator gone")
    fresh = MagicMock(spec_set=KafkaProducer)
    output = Output(broken)
    run_consumer(consumer, Recorder([]), ExactlyOnce(output, lambda: fresh), stop=threading.Event(), idle_timeout_s=0.05)
    assert output.producer is fresh
    fresh.init_transactions.assert_called_once()
    fresh.commit_transaction.assert_called_once()
    deadline = time.monotonic() + 5
    while not broken.close.called and time.monotonic() < deadline:  # closed in the background
        time.sleep(0.01)
    broken.close.assert_called_once()


def test_a_fenced_producer_is_replaced_and_the_batch_read_again() -> None:
    consumer = _consumer_with({TP: [record(b"a")]}, {TP: [record(b"a")]})
    fenced = MagicMock(spec_set=KafkaProducer)
    fenced.commit_transaction.side_effect = ProducerFencedError("transaction timed out by the coordinator")
    fenced.abort_transaction.side_effect = ProducerFencedError("still fenced")
    fresh = MagicMock(spec_set=KafkaProducer)
    output = Output(fenced)
    events: list[str] = []
    run_consumer(consumer, Recorder(events), ExactlyOnce(output, lambda: fresh), stop=threading.Event(), idle_timeout_s=0.05)
    assert output.producer is fresh and events == ["a", "discard", "a", "emit"]
    fresh.commit_transaction.assert_called_once()


def test_missing_transaction_rights_stop_the_stage() -> None:
    consumer = _consumer_with({TP: [record(b"a")]})
    producer = MagicMock(spec_set=KafkaProducer)
    producer.commit_transaction.side_effect = TransactionalIdAuthorizationFailedError("no ACL")
    with pytest.raises(PipelineError, match="not allowed"):
        run_consumer(consumer, Recorder([]), ExactlyOnce(Output(producer), MagicMock()), stop=threading.Event(), idle_timeout_s=1)
    producer.abort_transaction.assert_not_called()


def test_a_batch_that_keeps_failing_stops_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fraud_pipeline.stage.MAX_BATCH_RETRIES", 2)
    consumer = MagicMock(spec_set=KafkaConsumer)
    consumer.poll.return_value = {TP: [record(b"a")]}
    consumer.assignment.return_value = {TP}
    producer = MagicMock(spec_set=KafkaProducer)
    producer.commit_transaction.side_effect = KafkaTimeoutError("still down")
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda timeout: False)
    with pytest.raises(PipelineError, match="giving up after 2"):
        run_consumer(consumer, Recorder([]), ExactlyOnce(Output(producer), MagicMock()), stop=stop, idle_timeout_s=None)


def test_a_commit_lost_to_a_rebalance_is_not_fatal() -> None:
    consumer = _consumer_with({TP: [record(b"a")]}, {TP: [record(b"b", offset=1)]})
    consumer.commit.side_effect = [CommitFailedError("rebalanced"), None]
    events: list[str] = []
    delivery = AtLeastOnce(Output(MagicMock(spec_set=KafkaProducer)))
    run_consumer(consumer, Recorder(events), delivery, stop=threading.Event(), idle_timeout_s=0.05)
    assert events == ["a", "emit", "b", "emit"] and consumer.commit.call_count == 2


def test_a_stalled_rebalance_is_restarted_after_a_failed_commit() -> None:
    consumer = _consumer_with({TP: [record(b"a")]}, spec=False)  # reaches into the client's private coordinator
    consumer.commit.side_effect = RebalanceInProgressError("stalled")
    consumer._coordinator.rebalance_in_progress.return_value = True
    consumer._coordinator.need_rejoin.return_value = False
    delivery = AtLeastOnce(Output(MagicMock(spec_set=KafkaProducer)))
    run_consumer(consumer, Recorder([]), delivery, stop=threading.Event(), idle_timeout_s=0.05)
    consumer._coordinator.request_rejoin.assert_called_once()


def test_the_loop_ends_on_the_stop_event() -> None:
    consumer = _consumer_with()
    stop = threading.Event()
    stop.set()
    delivery = AtLeastOnce(Output(MagicMock(spec_set=KafkaProducer)))
    assert run_consumer(consumer, Recorder([]), delivery, stop=stop, idle_timeout_s=None) == "stopped"


def test_routed_records_keep_their_input_partition_modulo_the_topic() -> None:
    producer = MagicMock(spec_set=KafkaProducer)
    producer.partitions_for.return_value = {0, 1}
    output = Output(producer)
    assert [output.partition_for("fraud_payments", p) for p in range(6)] == [0, 1, 0, 1, 0, 1]
    producer.partitions_for.assert_called_once_with("fraud_payments")  # looked up once per topic
    producer.partitions_for.return_value = set()
    with pytest.raises(BatchError, match="topic empty has no partitions"):
        output.partition_for("empty", 0)
