"""What a stage writes through: the Output producer with its first failed send, and the dead-letter topic."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..clients import ClientError, FatalError, Headers, Producer, Record, RetriableError
from ..kafka_io import METADATA_TIMEOUT_S, record_source

# Dead letters are logged under the logger they always were ("rejected ..."): log lines stay as they were.
_dead_letter_log = logging.getLogger("fraud_pipeline.kafka_io")


class BatchError(Exception):
    """A batch could not be delivered; it is rolled back and read again."""


class Output:
    """The producer a stage writes through, and the first send that failed.

    Sends are asynchronous; ``settled`` says, without waiting, whether the sends
    up to a mark are acknowledged, ``flush`` waits for all of them; both raise
    BatchError if one failed, so a batch is never committed past a lost record.
    """

    def __init__(self, producer: Producer) -> None:
        self.stalled = False
        """A flush timed out: sends of the producer are still pending, retried by the client."""
        self._failure: Exception | None = None
        self._partitions: dict[str, int] = {}
        self._held: list[tuple[str, bytes | None, bytes | None, Headers | None, int | None]] | None = None
        self._first_send: tuple[Callable[[], None], Callable[[], None]] | None = None
        """Called once at the next record queued to the producer, and once it is acknowledged (``watch_first_send``)."""
        self.producer = producer
        self.send = producer.send

    @property
    def producer(self) -> Producer:
        return self._producer

    @producer.setter
    def producer(self, producer: Producer) -> None:
        """Write through ``producer`` from now on; a replaced producer's late failures are ignored."""
        self._producer = producer
        self.stalled = False
        self._held = None
        self._first_send = None
        self.send = producer.send
        producer.on_error(lambda exc: self._on_error(producer, exc))

    def partition_for(self, topic: str, source_partition: int) -> int:
        """The partition of ``topic`` that records read from ``source_partition`` go to.

        Input partition modulo the topic's partitions: a key's records, already
        in one input partition, stay together and in order, and the producer
        skips hashing every key (a tenth of the detector's time in kafka-python).
        """
        count = self._partitions.get(topic)
        if count is None:
            try:
                count = self._partitions[topic] = self._producer.partition_count(topic, METADATA_TIMEOUT_S)
            except ClientError as exc:
                raise BatchError(f"topic {topic} has no partitions: {exc}") from exc
        return source_partition % count

    def _on_error(self, producer: Producer, exc: Exception) -> None:
        # A replaced producer's late failures belong to a batch already rolled back.
        if self._failure is None and producer is self._producer:
            self._failure = exc

    def check(self) -> None:
        """Raise BatchError if a send failed since the last check."""
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise BatchError(f"a send failed: {exc}")

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send (at most ``timeout_s``); BatchError if one failed or did not finish."""
        try:
            self._producer.flush(timeout_s)
        except RetriableError as exc:
            self.stalled = True
            raise BatchError(f"sends not acknowledged within {timeout_s}s: {exc}") from exc
        except FatalError:
            raise
        except ClientError as exc:
            raise BatchError(str(exc)) from exc
        self.check()

    def sent(self) -> int:
        """Records sent so far through the current producer: a mark to ask ``settled`` about later."""
        return self._producer.sent()

    def settled(self, mark: int) -> bool:
        """Whether every record sent before ``mark`` is acknowledged, without waiting; BatchError if a send failed."""
        done = self._producer.settled() >= mark
        self.check()  # after: a failed send is heard of before the count passes it
        return done

    def forget_failures(self) -> None:
        """The batch was rolled back: its failed sends no longer matter."""
        self._failure = None

    def watch_first_send(self, sent: Callable[[], None], acknowledged: Callable[[], None]) -> None:
        """Call ``sent`` once, right after the next record is queued to the producer (a held one when released), and
        ``acknowledged`` once the brokers have it (``Producer.watch_next_acknowledgement``)."""
        self._first_send = (sent, acknowledged)
        if self._held is None:
            self.send = self._send_first

    def _send_first(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None,
                    partition: int | None = None) -> None:
        self.send = self._producer.send
        notes, self._first_send = self._first_send, None
        if notes is not None:
            self._producer.watch_next_acknowledgement(notes[1])
        self._producer.send(topic, key, value, headers, partition)
        if notes is not None:
            notes[0]()

    def hold(self) -> None:
        """Keep every send from now on instead of queueing it (a transaction is being committed): see ``release``."""
        self._held = []
        self.send = self._hold

    def _hold(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None,
              partition: int | None = None) -> None:
        assert self._held is not None
        self._held.append((topic, key, value, headers, partition))

    def release(self, *, send: bool) -> None:
        """Stop holding sends; queue the held ones in order (``send``) or drop them (rolled back)."""
        held, self._held = self._held or [], None
        self.send = self._producer.send if self._first_send is None else self._send_first
        if send:
            for args in held:
                self.send(*args)


class DeadLetters:
    """Sends records that cannot be read to the dead-letter topic, unchanged.

    The original key and value are kept byte for byte (the original headers and
    timestamp are not); headers say why and from where: ``error``,
    ``source.topic``, ``source.partition``, ``source.offset``, ``rejected.by``
    and ``rejected.at.ms`` (and ``value.null`` for a record with neither key nor value).
    """

    def __init__(self, output: Output, topic: str, component: str) -> None:
        self._output = output
        self._topic = topic
        self._component = component

    def send(self, record: Record, reason: str) -> None:
        _dead_letter_log.warning("rejected %s: %s -> %s", record_source(record), reason, self._topic)
        value = record.value
        headers = []
        if value is None and record.key is None:  # Kafka refuses a record with neither
            value = b""
            headers.append(("value.null", b"true"))
        headers += [
            ("error", reason.encode("utf-8")),
            ("source.topic", record.topic.encode("utf-8")),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
            ("rejected.by", self._component.encode("utf-8")),
            ("rejected.at.ms", str(int(time.time() * 1000)).encode()),
        ]
        self._output.send(self._topic, record.key, value, headers)
