"""The client seam's backends: how each library's errors are classified, and what the kafka-python backend adds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from unittest.mock import MagicMock

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from fraud_pipeline import topics
from fraud_pipeline.clients import (
    ClientError,
    FatalError,
    FencedError,
    NotAuthorizedError,
    PartitionInfo,
    Producer,
    Record,
    RefusedError,
    RetriableError,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    confluent,
    kafka_python,
)
from fraud_pipeline.config import Settings
from fraud_pipeline.errors import PipelineError
from fraud_pipeline.stage import AtLeastOnce, Output, run_consumer
from fraud_pipeline.topics import _await_metadata

TP = TopicPartition("payments", 0)
KTP = KafkaTP("payments", 0)

# --- error classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kerr.ProducerFencedError("newer instance"), FencedError),
        (kerr.InvalidProducerEpochError("old epoch"), FencedError),
        (kerr.TopicAuthorizationFailedError("no ACL"), NotAuthorizedError),
        (kerr.TransactionalIdAuthorizationFailedError("no ACL"), NotAuthorizedError),
        (kerr.GroupAuthorizationFailedError("no ACL"), NotAuthorizedError),
        (kerr.SaslAuthenticationFailedError("bad password"), FatalError),
        (kerr.KafkaConnectionError("broker gone"), RetriableError),
        (kerr.KafkaTimeoutError("no answer"), RetriableError),
        (kerr.CommitFailedError("generation changed"), RetriableError),
        (kerr.RebalanceInProgressError("rebalancing"), RetriableError),
    ],
)
def test_kafka_python_errors_are_classified(error: Exception, kind: type[ClientError]) -> None:
    classified = kafka_python.classify(error, "commit")
    assert type(classified) is kind
    assert str(classified).removeprefix("not authorized: ").startswith(f"commit: {type(error).__name__}: ")  # what failed, and how
    assert isinstance(classified, FatalError) == (kind in (FatalError, NotAuthorizedError))


def test_kafka_python_classify_keeps_an_error_already_classified() -> None:
    error = FencedError("fenced")
    assert kafka_python.classify(error, "abort") is error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KafkaError(KafkaError.PRODUCER_FENCED, "newer instance"), FencedError),
        (KafkaError(KafkaError._FENCED, "fenced"), FencedError),
        (KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "old epoch"), FencedError),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no ACL"), NotAuthorizedError),
        (KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "no ACL"), NotAuthorizedError),
        (KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "bad password", fatal=True), FatalError),  # fatal, and no retry mends it
        (KafkaError(KafkaError._TRANSPORT, "broker gone"), RetriableError),
        (KafkaError(KafkaError._TIMED_OUT, "no answer", retriable=True), RetriableError),
        (KafkaError(KafkaError.CONCURRENT_TRANSACTIONS, "abort first", txn_requires_abort=True), RetriableError),
        (KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "idempotence broken", fatal=True), FencedError),  # a fatal error
        (KafkaError(KafkaError._TRANSPORT, "fatal whatever its code", fatal=True), FencedError),
        (KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "no such topic"), UnknownTopicError),
    ],
)
def test_confluent_errors_are_classified(error: KafkaError, kind: type[ClientError]) -> None:
    classified = confluent.classify(error, "commit")
    assert type(classified) is kind
    assert str(classified).removeprefix("not authorized: ").startswith("commit: ")
    # librdkafka's exceptions carry the same error: classified the same way
    assert type(confluent.classify(KafkaException(error))) is kind


def test_an_unknown_topic_is_a_fatal_error() -> None:
    assert issubclass(UnknownTopicError, FatalError)


def test_confluent_classify_keeps_classified_errors_and_treats_the_rest_as_transient() -> None:
    error = FatalError("no ACL")
    assert confluent.classify(error) is error
    assert type(confluent.classify(RuntimeError("something odd"))) is RetriableError
    assert type(confluent.classify(KafkaException("no error object"))) is RetriableError


# --- the kafka-python backend --------------------------------------------------------------------------------


def consumer_record(value: bytes, offset: int, *, key: bytes | None = None, headers: list | None = None) -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord(
        topic="payments", partition=0, leader_epoch=0, offset=offset, timestamp=1234, timestamp_type=0, key=key, value=value,
        headers=headers or [], checksum=None, serialized_key_size=len(key or b""), serialized_value_size=len(value),
        serialized_header_size=0,
    )


def test_kafka_python_poll_returns_the_seams_records_by_partition() -> None:
    raw = MagicMock(spec_set=KafkaConsumer)
    raw.poll.return_value = {KTP: [consumer_record(b"a", 5, key=b"K", headers=[("h", b"v")]), consumer_record(b"b", 6)]}
    batch = kafka_python.Consumer(raw, max_records=100).poll(0.25, 7)
    raw.poll.assert_called_once_with(timeout_ms=250, max_records=7)
    assert batch == {TP: [Record("payments", 0, 5, b"K", b"a", [("h", b"v")], 1234), Record("payments", 0, 6, None, b"b", [], 1234)]}
    assert type(next(iter(batch))) is TopicPartition


class _RdMessage:
    """What librdkafka's consumer hands over: a record, or an event such as the end of a partition."""

    def __init__(self, offset: int, eof: bool = False) -> None:
        self._offset, self._eof = offset, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def topic(self) -> str:
        return "payments"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000)


def test_confluent_position_passes_markers_past_a_batchs_last_record() -> None:
    """Record 6, then the end at 8 (7: a transaction's marker) in one batch: the position is 8, not 7, or a restore
    reading the changelog to its last stable offset would wait for ever."""
    rd = MagicMock()
    rd.poll.return_value = _RdMessage(6)
    rd.consume.return_value = [_RdMessage(8, eof=True)]
    consumer = confluent.Consumer(rd, MagicMock(), None)
    batch = consumer.poll(0.1, 100)
    assert [r.offset for r in batch[TP]] == [6]
    assert consumer.position(TP) == 8
    rd.poll.return_value, rd.consume.return_value = _RdMessage(8), [_RdMessage(9)]
    consumer.poll(0.1, 100)
    assert consumer.position(TP) == 10


def test_kafka_python_poll_logs_a_lost_broker_and_raises_what_no_retry_mends() -> None:
    raw = MagicMock(spec_set=KafkaConsumer)
    consumer = kafka_python.Consumer(raw, max_records=100)
    raw.poll.side_effect = kerr.KafkaConnectionError("broker gone")
    assert consumer.poll(0.1, 10) == {}
    raw.poll.side_effect = kerr.TopicAuthorizationFailedError("no ACL")
    with pytest.raises(FatalError, match="TopicAuthorizationFailedError"):
        consumer.poll(0.1, 10)


def test_kafka_python_commit_and_committed_speak_next_offsets() -> None:
    raw = MagicMock(spec_set=KafkaConsumer)
    raw.committed.return_value = None  # nothing committed yet
    consumer = kafka_python.Consumer(raw, max_records=100)
    consumer.commit({TP: 6})
    raw.commit.assert_called_once_with({KTP: OffsetAndMetadata(6, "", -1)}, timeout_ms=kafka_python.COMMIT_TIMEOUT_MS)
    assert consumer.committed([TP], 5.0) == {TP: None}
    raw.commit.side_effect = kerr.CommitFailedError("rebalanced")
    with pytest.raises(RetriableError, match="offset commit"):
        consumer.commit({TP: 7})


class _Handler:
    """A RecordHandler that notes the values it handled and emitted."""

    def __init__(self) -> None:
        self.handled: list[bytes] = []
        self.emitted = 0

    def begin_batch(self, batch: object) -> None:
        pass

    def partitions_assigned(self, partitions: set[int]) -> None:
        pass

    def handle(self, record: Record) -> None:
        self.handled.append(record.value or b"")

    def seal(self) -> None:
        pass

    def emit(self) -> None:
        self.emitted += 1

    def discard(self) -> None:
        pass


def test_a_stalled_rebalance_is_restarted_after_a_failed_commit() -> None:
    raw = MagicMock()  # the backend reaches into kafka-python's private coordinator: no spec
    raw.poll.side_effect = itertools.chain([{KTP: [consumer_record(b"a", 0)]}], itertools.repeat({}))
    raw.assignment.return_value = {KTP}
    raw.commit.side_effect = kerr.RebalanceInProgressError("stalled")
    raw._coordinator.rebalance_in_progress.return_value = True
    raw._coordinator.need_rejoin.return_value = False
    handler = _Handler()
    producer = MagicMock(spec_set=Producer)
    producer.sent.return_value = producer.settled.return_value = 0  # nothing to wait for
    delivery = AtLeastOnce(Output(producer))
    run_consumer(kafka_python.Consumer(raw, max_records=100), handler, delivery, stop=threading.Event(), idle_timeout_s=0.05,
                 commit_interval_s=0)
    raw.commit_async.assert_called_once()  # in the loop, without waiting
    raw.commit.assert_called_once_with({KTP: OffsetAndMetadata(1, "", -1)}, timeout_ms=kafka_python.COMMIT_TIMEOUT_MS)  # at the end
    raw._coordinator.request_rejoin.assert_called_once()
    assert handler.handled == [b"a"] and handler.emitted == 1  # the output was out: the failed commit was not fatal


def test_kafka_python_commits_asked_for_in_a_revoke_callback_are_awaited_on_its_network_thread() -> None:
    """kafka-python 3.0 refuses a blocking commit in a rebalance callback: the backend awaits it instead."""
    raw = MagicMock()
    awaited: list[dict[KafkaTP, OffsetAndMetadata]] = []

    async def commit_offsets(offsets: dict[KafkaTP, OffsetAndMetadata]) -> None:
        awaited.append(dict(offsets))

    raw._coordinator._commit_offsets_sync_async = commit_offsets
    consumer = kafka_python.Consumer(raw, max_records=100)
    revoked: list[set[TopicPartition]] = []

    def on_revoked(partitions: set[TopicPartition]) -> None:
        revoked.append(partitions)
        consumer.commit({TP: 9})  # what the stage's commit-before-revoke does

    consumer.subscribe("payments", on_assigned=lambda _: None, on_revoked=on_revoked, on_lost=lambda _: None)
    listener = raw.subscribe.call_args.kwargs["listener"]
    asyncio.run(listener.on_partitions_revoked({KTP}))
    assert revoked == [{TP}]
    raw.commit.assert_not_called()
    assert awaited == [{KTP: OffsetAndMetadata(9, "", -1)}]
    consumer.commit({TP: 10})  # outside the callback: the blocking commit again
    raw.commit.assert_called_once_with({KTP: OffsetAndMetadata(10, "", -1)}, timeout_ms=kafka_python.COMMIT_TIMEOUT_MS)


def test_a_commit_failure_outside_a_stalled_rebalance_does_not_rejoin() -> None:
    raw = MagicMock()
    raw.commit.side_effect = kerr.CommitFailedError("rebalanced")
    raw._coordinator.rebalance_in_progress.return_value = True
    raw._coordinator.need_rejoin.return_value = True  # the client rejoins on its own
    with pytest.raises(RetriableError):
        kafka_python.Consumer(raw, max_records=100).commit({TP: 1})
    raw._coordinator.request_rejoin.assert_not_called()


def test_kafka_python_send_failures_reach_the_handler_classified() -> None:
    raw = MagicMock(spec_set=KafkaProducer)
    producer = kafka_python.Producer(raw)
    failures: list[Exception] = []
    producer.on_error(failures.append)
    producer.send("fraud_payments", b"K", b"v", [("decision", b"fraud")], 1)
    raw.send.assert_called_once_with("fraud_payments", key=b"K", value=b"v", headers=[("decision", b"fraud")], partition=1)
    errback, sequence = raw.send.return_value.add_errback.call_args.args
    errback(sequence, kerr.KafkaTimeoutError("no leader"))  # as kafka-python fails the send's future
    raw.send.side_effect = kerr.ProducerFencedError("newer instance")  # raised by send itself
    producer.send("fraud_payments", b"K", b"v")
    assert [type(f) for f in failures] == [RetriableError, FencedError]
    assert "no leader" in str(failures[0])


def test_kafka_python_offset_look_ups_wait_no_longer_than_asked() -> None:
    """kafka-python's own default is its request timeout, 305 s: a look-up in the commit path held a detector that long."""
    raw = MagicMock()
    raw.beginning_offsets.return_value, raw.end_offsets.return_value = {KTP: 0}, {KTP: 9}
    raw.offsets_for_times.return_value = {KTP: None}
    raw.committed.return_value = 4
    consumer = kafka_python.Consumer(raw, max_records=100)
    assert consumer.watermarks([TP], 2.0) == {TP: (0, 9)}
    assert consumer.offsets_for_times({TP: 1}, 2.0) == {TP: None}
    assert consumer.committed([TP], 2.0) == {TP: 4}
    for method in (raw.beginning_offsets, raw.end_offsets, raw.offsets_for_times, raw.committed):
        assert method.call_args.kwargs["timeout_ms"] == 2000, method
    raw.end_offsets.side_effect = kerr.KafkaTimeoutError("Failed to get offsets by timestamps in 2000 ms")
    with pytest.raises(RetriableError):
        consumer.watermarks([TP], 2.0)


def test_kafka_python_offsets_asked_again_with_fresh_metadata_after_a_step_that_timed_out() -> None:
    """kafka-python 3.0.12 asks a leader that leads no more again and again without refreshing its metadata: a
    step of 2 s that times out refreshes them, then asks again, within the caller's deadline."""
    raw = MagicMock()
    raw.beginning_offsets.side_effect = [kerr.KafkaTimeoutError("Failed to get offsets by timestamps in 2000 ms"), {KTP: 3}]
    raw.end_offsets.return_value = {KTP: 9}
    consumer = kafka_python.Consumer(raw, max_records=100)
    raw._cluster.request_update.reset_mock()  # the subscription's own refresh aside
    assert consumer.watermarks([TP], 30.0) == {TP: (3, 9)}
    raw._cluster.request_update.assert_called_once_with()
    assert [c.kwargs["timeout_ms"] for c in raw.beginning_offsets.call_args_list] == [2000, 2000]
    raw.beginning_offsets.side_effect = kerr.KafkaTimeoutError("Failed to get offsets by timestamps in 2000 ms")
    with pytest.raises(RetriableError):  # every step timed out: 15 of them, as many refreshes but the last
        consumer.watermarks([TP], 30.0)
    assert raw.beginning_offsets.call_count == 2 + 15 and raw._cluster.request_update.call_count == 1 + 14


def test_kafka_python_sends_settle_in_order_whatever_order_their_answers_come_in() -> None:
    raw = MagicMock(spec_set=KafkaProducer)
    producer = kafka_python.Producer(raw)
    failures: list[Exception] = []
    producer.on_error(failures.append)
    futures = []
    for n in range(3):
        producer.send("legit_payments", None, b"%d" % n)
        futures.append((raw.send.return_value.add_callback.call_args.args, raw.send.return_value.add_errback.call_args.args))
    assert (producer.sent(), producer.settled()) == (3, 0)
    (acked, first), _ = futures[1]
    acked(first, "metadata")  # the second answered first: nothing settled yet
    assert producer.settled() == 0
    _, (failed, zeroth) = futures[0]
    failed(zeroth, kerr.KafkaTimeoutError("expired"))  # the first failed: heard of, and settled
    assert producer.settled() == 2 and len(failures) == 1
    (acked, last), _ = futures[2]
    acked(last, "metadata")
    assert producer.settled() == 3


def test_confluent_sends_settle_only_when_none_is_in_flight_and_only_failures_call_back() -> None:
    """No Python call per delivered record: failure reports only, and a stage settles the sends by flushing them."""
    raw = MagicMock()
    producer = confluent.Producer.__new__(confluent.Producer)
    producer._producer, producer._sends, producer._watch = raw, 0, None
    failures: list[Exception] = []
    producer.on_error(failures.append)
    producer.send("legit_payments", None, b"v", None, 0)
    producer.send("dead_letters", b"k", b"v")
    assert all("on_delivery" not in call.kwargs for call in raw.produce.call_args_list)
    raw.__len__.return_value = 1
    assert (producer.sent(), producer.settled()) == (2, 0)
    raw.__len__.return_value = 0
    assert producer.settled() == 2
    producer._report_failure(None, MagicMock())  # a success, were one reported: nothing
    producer._report_failure(KafkaError(KafkaError._MSG_TIMED_OUT), MagicMock())
    assert len(failures) == 1
    assert not confluent.Producer.reports_each_send and kafka_python.Producer.reports_each_send


def test_kafka_python_partition_count_waits_for_the_topics_metadata() -> None:
    raw = MagicMock(spec_set=KafkaProducer)
    producer = kafka_python.Producer(raw)
    raw.partitions_for.return_value = {0, 1, 2}
    assert producer.partition_count("fraud_payments", 30.0) == 3
    raw.partitions_for.return_value = set()
    with pytest.raises(UnknownTopicError, match="topic empty has no partitions"):
        producer.partition_count("empty", 30.0)


def test_kafka_python_transaction_steps_have_a_deadline() -> None:
    raw = MagicMock()  # the backend reaches into kafka-python's private transaction manager: no spec
    manager = raw._transaction_manager
    producer = kafka_python.Producer(raw)
    producer.commit_transaction(20.0)
    manager.begin_commit.return_value.wait.assert_called_once_with(timeout_ms=20000.0)
    raw._sender.wakeup.assert_called()
    producer.send_offsets_to_transaction({TP: 3}, "group-meta", 20.0)
    manager.send_offsets_to_transaction.assert_called_once_with({KTP: OffsetAndMetadata(3, "", -1)}, "group-meta")
    manager.begin_abort.return_value.wait.side_effect = kerr.ProducerFencedError("newer instance")
    with pytest.raises(FencedError):
        producer.abort_transaction(20.0)
    manager.send_offsets_to_transaction.return_value.wait.return_value = False  # the coordinator's broker died
    with pytest.raises(RetriableError, match="no answer from the coordinator in 20s"):
        producer.send_offsets_to_transaction({TP: 4}, "group-meta", 20.0)
    # Still queued in kafka-python, the offsets could be sent inside the next transaction: the producer is set aside.
    for step in (lambda: producer.abort_transaction(20.0), producer.begin_transaction, lambda: producer.init_transactions(20.0),
                 lambda: producer.commit_transaction(20.0)):
        with pytest.raises(FencedError, match="setting this producer aside"):
            step()
    manager.begin_abort.assert_called_once()  # the aside producer is never asked again


def test_a_kafka_python_producer_closed_past_its_deadline_stops_its_sender() -> None:
    """kafka-python 3.0's close raises from its flush at the deadline, before its own force-close."""
    raw = MagicMock()
    raw.close.side_effect = kerr.KafkaTimeoutError("Timeout waiting for future")
    raw._sender.is_alive.return_value = True
    kafka_python.Producer(raw).close(0)
    raw._sender.force_close.assert_called_once()


def test_a_confluent_transactional_call_that_never_returns_sets_its_producer_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka 2.16's send_offsets_to_transaction can block past its timeout (issue 5456): the producer is fenced."""
    monkeypatch.setattr(confluent, "TXN_WATCHDOG_MARGIN_S", 0.2)
    errors = confluent._ErrorLog("t", "localhost:1", None)
    producer = confluent.Producer({"bootstrap.servers": "localhost:1", "transactional.id": "t"}, errors)
    never = threading.Event()
    stuck = MagicMock()
    stuck.send_offsets_to_transaction.side_effect = lambda *args: never.wait()
    stuck.commit_transaction.side_effect = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
    producer._producer = stuck
    with pytest.raises(FencedError, match="did not return within 0s, past its 0s timeout"):
        producer.send_offsets_to_transaction({TopicPartition("p", 0): 5}, object(), 0.1)
    with pytest.raises(FencedError):  # every later call at once, without touching the blocked client
        producer.abort_transaction(1.0)
    stuck.abort_transaction.assert_not_called()
    never.set()
    healthy = confluent.Producer({"bootstrap.servers": "localhost:1", "transactional.id": "u"}, errors)
    healthy._producer = stuck
    with pytest.raises(RetriableError, match="commit_transaction"):  # a call that returns an error is classified as ever
        healthy.commit_transaction(1.0)


def test_a_confluent_producer_that_reports_only_failures_refuses_to_watch_an_acknowledgement() -> None:
    """It would never hear of one: the watch needs a producer built with each_acknowledgement."""
    errors = confluent._ErrorLog("t", "localhost:1", None)
    quiet = confluent.Producer({"bootstrap.servers": "localhost:1"}, errors)
    with pytest.raises(ValueError, match="each_acknowledgement"):
        quiet.watch_next_acknowledgement(lambda: None)
    quiet.close(0)
    watching = confluent.Producer({"bootstrap.servers": "localhost:1"}, errors, each_acknowledgement=True)
    watching.watch_next_acknowledgement(lambda: None)
    watching.close(0)


def _bootstrap_log(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("kafka.net.manager", logging.WARNING, __file__, 1, message, args, None)


@pytest.mark.parametrize("error", [
    kerr.SaslAuthenticationFailedError("invalid credentials"),
    kerr.KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
])
def test_kafka_python_gives_up_its_bootstrap_at_the_first_refusal_no_retry_mends(error: Exception) -> None:
    failures = kafka_python._BootstrapFailures()
    with pytest.raises(kafka_python._Refused):
        failures.emit(_bootstrap_log("Bootstrap connection to %s failed: %s (backoff %.2f secs)", "bootstrap-0", error, 0.1))
    refused = failures.why("localhost:9191", "payment-producer", kerr.KafkaTimeoutError())
    assert isinstance(refused, RefusedError)


@pytest.mark.parametrize(("message", "error"), [
    ("Bootstrap connection to %s failed: %s (backoff %.2f secs)", kerr.KafkaConnectionError("111 ECONNREFUSED")),
    ("Bootstrap connection to %s failed: %s (backoff %.2f secs)", kerr.KafkaConnectionError("Handshake failed: UNEXPECTED_EOF")),
    ("Connection failed: %s", kerr.SaslAuthenticationFailedError("invalid credentials")),
])
def test_kafka_python_keeps_trying_its_bootstrap_otherwise(message: str, error: Exception) -> None:
    """A broker down or a hang-up may mend within the timeout; and only the bootstrap's own line may be interrupted."""
    failures = kafka_python._BootstrapFailures()
    failures.emit(_bootstrap_log(message, *(["bootstrap-0", error, 0.1] if "Bootstrap" in message else [error])))
    assert failures.errors == [error]


def test_confluent_configs_of_a_topic_created_moments_ago_are_asked_again() -> None:
    """The metadata lists the topic, the broker asked for its configs does not know it yet: retriable, not unknown."""
    admin = confluent.Admin(MagicMock(), "localhost:1", confluent._ErrorLog("t", "localhost:1", None), "PLAINTEXT")
    admin.list_topics = MagicMock(return_value={"new"})  # type: ignore[method-assign]
    future = MagicMock()
    future.result.side_effect = KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Broker: Unknown topic or partition"))
    admin._admin.describe_configs.return_value = {confluent.ConfigResource(confluent.ResourceType.TOPIC, "new"): future}
    with pytest.raises(RetriableError, match="not yet known to every broker"):
        admin.topic_configs(["new", "absent"])
    asked = admin._admin.describe_configs.call_args.args[0]
    assert [resource.name for resource in asked] == ["new"]


def test_a_topic_just_created_is_waited_for_until_every_partition_has_a_leader(caplog: pytest.LogCaptureFixture) -> None:
    """The brokers learn of a new topic after the controller: a script goes on only once they show it whole."""
    spec = TopicSpec("new", 2, 3, 2)
    led = [PartitionInfo(0, 1, (1, 2, 3), (1, 2, 3)), PartitionInfo(1, 2, (1, 2, 3), (1, 2, 3))]
    leaderless = [led[0], PartitionInfo(1, -1, (1, 2, 3), ())]
    admin = MagicMock()
    admin.describe_topics.side_effect = [RetriableError("a broker lost"), {}, {"new": leaderless}, {"new": led}]
    _await_metadata(admin, [spec])
    assert admin.describe_topics.call_count == 4
    admin = MagicMock()
    admin.describe_topics.return_value = {}
    with caplog.at_level(logging.WARNING):
        _await_metadata(admin, [spec], timeout_s=0.3)  # never shown: a warning, and the script goes on
    assert "new created but not yet in the brokers' metadata after 0.3s" in caplog.text


def test_a_changelog_waits_for_its_input_created_moments_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-keying topic just created may be unknown to the broker asked next: its changelog asks again."""
    looks = iter([{}, {}, {"rekeyed": (6, 3)}])
    monkeypatch.setattr(topics, "describe_topics", lambda settings, names: next(looks))
    monkeypatch.setattr(topics.time, "sleep", lambda s: None)
    made: list[TopicSpec] = []
    monkeypatch.setattr(topics, "ensure_topics", lambda settings, specs, uses: made.extend(specs) or {"cl": "created"})
    assert topics.prepare_changelog(Settings(), "rekeyed", "cl") is True
    assert [(spec.name, spec.partitions, spec.compacted) for spec in made] == [("cl", 6, True)]
    monkeypatch.setattr(topics, "describe_topics", lambda settings, names: {})
    monkeypatch.setattr(topics, "NEW_TOPIC_METADATA_S", 0.0)
    with pytest.raises(PipelineError, match="topic rekeyed does not exist"):
        topics.prepare_changelog(Settings(), "rekeyed", "cl")
