"""Build the seam's records (fraud_pipeline.clients.Record) for tests, read back what a mocked producer sent, and a changelog in memory."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from unittest.mock import MagicMock

from fraud_pipeline.clients import Headers, Producer, Record, TopicPartition


def record(
    value: bytes | None, *, topic: str = "payments", partition: int = 0, offset: int = 0, key: bytes | None = None,
    timestamp: int = 0, headers: Headers = (),
) -> Record:
    return Record(topic=topic, partition=partition, offset=offset, key=key, value=value, headers=headers, timestamp=timestamp)


class Sent(NamedTuple):
    """One ``Producer.send`` call, by the seam's parameter names."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    partition: int | None


_SEND = inspect.signature(Producer.send)


def sent(call: Any) -> Sent:
    """A recorded ``send`` call bound to the seam's signature (TypeError if it does not fit)."""
    bound = _SEND.bind(None, *call.args, **call.kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["self"]
    return Sent(**arguments)


def sends(producer: MagicMock) -> list[Sent]:
    """Every ``send`` of a ``MagicMock(spec_set=Producer)``, in order."""
    return [sent(call) for call in producer.send.call_args_list]


TOPIC = "g-payments-changelog"
"""The changelog topic of the fakes below."""


class ChangelogLog:
    """The changelog partitions as a read_committed reader sees them: records of committed transactions only."""

    def __init__(self) -> None:
        self.records: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.open: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int) -> None:
        assert topic == TOPIC and key is not None
        self.open.setdefault(partition, []).append((key, value))

    def commit(self) -> None:
        for partition, records in self.open.items():
            self.records.setdefault(partition, []).extend(records)
        self.open.clear()

    def abort(self) -> None:
        self.open.clear()


class _Positions:
    """What a groupless consumer keeps: the position of each partition assigned."""

    def __init__(self) -> None:
        self._positions: dict[TopicPartition, int] = {}

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._positions = dict(offsets)

    def position(self, tp: TopicPartition) -> int:
        return self._positions.get(tp, 0)

    def close(self) -> None:
        pass


class LogReader(_Positions):
    """A groupless consumer of ChangelogLog (the seam's calls a Restorer makes)."""

    def __init__(self, log: ChangelogLog) -> None:
        super().__init__()
        self._log = log

    def poll(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch = {}
        for tp, position in self._positions.items():
            records = self._log.records.get(tp.partition, [])[position:position + 7]  # small chunks: many steps
            if records:
                batch[tp] = [Record(tp.topic, tp.partition, position + i, k, v, (), 0) for i, (k, v) in enumerate(records)]
                self._positions[tp] = position + len(records)
        return batch

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (0, len(self._log.records.get(tp.partition, []))) for tp in partitions}


class GroupConsumer:
    """The stage consumer's calls a PartitionStates makes to position a restored partition: committed offsets, seeks."""

    def __init__(self) -> None:
        self.committed_offsets: dict[int, int] = {}
        self.seeks: list[tuple[int, int]] = []

    def committed(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        return {tp: self.committed_offsets.get(tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def position(self, tp: TopicPartition) -> int:
        """Where the client stands: as librdkafka behind the seam, unknown (0) until it has read."""
        return 0


def memory_states(folder: str | None = None) -> Any:
    """A PartitionStates with its stores in a temporary folder and its changelog in memory (no Kafka)."""
    import tempfile

    from fraud_pipeline.rules import decode_entity, encode_entity
    from fraud_pipeline.state import PartitionStates

    return PartitionStates(folder or tempfile.mkdtemp(prefix="states-"), "g", "payments", TOPIC, LogReader(ChangelogLog()),  # type: ignore[arg-type]
                           encode_entity, decode_entity)


class TransactionalLog:
    """Changelog partitions as a broker keeps them: every record at its own offset, each producer's transaction open until
    it commits or aborts (a marker then takes an offset in each partition it wrote), aborted records kept but never read,
    and compaction (each key's last committed record below the last stable offset kept, the rest removed, offsets kept).
    """

    def __init__(self) -> None:
        self.entries: dict[int, list[tuple[bytes, bytes | None] | None]] = {}
        """Per partition, by offset: a record (key, value), or None (a marker, an aborted or a compacted-away record)."""
        self._aborted: set[tuple[int, int]] = set()
        self._open: dict[str, dict[int, list[int]]] = {}
        """Per producer, the offsets of its open transaction's records, by partition."""
        self.markers = 0

    def sender(self, producer: str) -> Any:
        """``send(topic, key, value, partition)`` into ``producer``'s transaction."""
        def send(topic: str, key: bytes | None, value: bytes | None, partition: int) -> None:
            assert topic == TOPIC and key is not None
            log = self.entries.setdefault(partition, [])
            self._open.setdefault(producer, {}).setdefault(partition, []).append(len(log))
            log.append((key, value))
        return send

    def _end(self, producer: str, aborted: bool) -> None:
        for partition, offsets in self._open.pop(producer, {}).items():
            if aborted:
                self._aborted.update((partition, offset) for offset in offsets)
            self.entries[partition].append(None)  # the marker
            self.markers += 1

    def commit(self, producer: str) -> None:
        self._end(producer, aborted=False)

    def abort(self, producer: str) -> None:
        """The transaction aborted (or fenced: the next producer with the transactional id aborts it)."""
        self._end(producer, aborted=True)

    def stable(self, partition: int) -> int:
        """The last stable offset: a read_committed reader reads up to the first record of an open transaction."""
        open_offsets = [offsets[0] for by_partition in self._open.values() if (offsets := by_partition.get(partition))]
        return min(open_offsets, default=len(self.entries.get(partition, [])))

    def readable(self, partition: int, offset: int) -> tuple[bytes, bytes | None] | None:
        entry = self.entries.get(partition, [])[offset]
        return None if entry is None or (partition, offset) in self._aborted else entry

    def compact(self) -> None:
        """The log cleaner: below the last stable offset, only each key's last committed record is left (tombstones kept)."""
        for partition, log in self.entries.items():
            last: dict[bytes, int] = {}
            stable = self.stable(partition)
            for offset in range(stable):
                entry = self.readable(partition, offset)
                if entry is not None:
                    last[entry[0]] = offset
            keep = set(last.values())
            for offset in range(stable):
                if offset not in keep:
                    log[offset] = None


class TransactionalReader(_Positions):
    """A groupless read_committed consumer of a TransactionalLog: its position passes markers, aborted and removed records."""

    def __init__(self, log: TransactionalLog) -> None:
        super().__init__()
        self._log = log

    def poll(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch = {}
        for tp, position in self._positions.items():
            stable = self._log.stable(tp.partition)
            records = []
            while position < stable and len(records) < 5:  # small chunks: many steps
                entry = self._log.readable(tp.partition, position)
                if entry is not None:
                    records.append(Record(tp.topic, tp.partition, position, entry[0], entry[1], (), 0))
                position += 1
            self._positions[tp] = position
            if records:
                batch[tp] = records
        return batch

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        """(0, the last stable offset): compaction never moves a log's start."""
        return {tp: (0, self._log.stable(tp.partition)) for tp in partitions}
