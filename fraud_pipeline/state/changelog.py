"""The changelog topic of a stage's state, and restoring local stores from it.

Every change a commit carries is also sent, key by key (an entity's whole new
value), to a compacted topic partitioned like the stage's input:
``<group>-<input topic>-changelog``, as Kafka Streams names its changelogs
``<application.id>-<store>-changelog``. Under exactly-once the changes are in
the same transaction as the routed records and the input offsets; under
at-least-once they are flushed with the routed records before the offsets are
committed. Compaction keeps each key's last value, so the topic holds the
whole state whatever the windows' length.

A partition the stage gains is restored before its payments are decided: from
its local store's changelog offset (0 when the store is new or was lost) to
the changelog's end, a chunk between two polls of the stage's consumer, the
input partition held back meanwhile (``Restorer``; stage.loop reads its records again once it is ready).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..clients import ClientError, Consumer, TopicPartition
from ..kafka_io import MAX_POLL_RECORDS, METADATA_TIMEOUT_S, retrying
from .store import PartitionStore

log = logging.getLogger(__name__)
T = TypeVar("T")

RESTORE_CHUNK_S = 0.2
"""How long one restore step may read before the stage polls again."""


def changelog_topic(group_id: str, source_topic: str) -> str:
    """The changelog of a group's state over ``source_topic``: ``fraud-detector-payments-changelog``.

    A detector stage reading its own repartition topic ``<group>-repartition`` has ``<group>-changelog``.
    """
    if source_topic == f"{group_id}-repartition":
        return f"{group_id}-changelog"
    return f"{group_id}-{source_topic}-changelog"


@dataclass
class _Restoring:
    store: PartitionStore
    position: int
    end: int
    started: float
    records: int = 0


class Restorer:
    """Brings partitions' local stores up to the end of their changelog partitions, a chunk at a time.

    ``reader`` is a consumer outside any group (read_committed: records of
    aborted transactions are never applied).
    """

    def __init__(self, reader: Consumer, topic: str) -> None:
        self._reader = reader
        self._topic = topic
        self._pending: dict[int, _Restoring] = {}
        self._unstarted: dict[int, tuple[PartitionStore, float]] = {}
        """Partitions whose changelog end could not be read yet."""
        self.restored: dict[int, tuple[int, float]] = {}
        """Per partition, the last restore's records applied and seconds taken."""

    @property
    def pending(self) -> set[int]:
        """Partitions still restoring."""
        return set(self._pending) | set(self._unstarted)

    def ends(self, partitions: Iterable[int], *, retry: bool = True, timeout_s: float = METADATA_TIMEOUT_S) -> dict[int, tuple[int, int]]:
        """``(first offset, end offset)`` of changelog partitions (the end: the last stable offset)."""
        tps = [TopicPartition(self._topic, p) for p in partitions]
        if not tps:
            return {}
        marks = (retrying if retry else _once)(lambda: self._reader.watermarks(tps, timeout_s))
        return {tp.partition: mark for tp, mark in marks.items()}

    def start(self, partition: int, store: PartitionStore, started: float | None = None) -> bool:
        """Begin restoring ``store`` (opened at ``started``, time.monotonic); True when it is already complete."""
        started = time.monotonic() if started is None else started
        local = store.changelog_offset()
        try:
            first, end = self.ends([partition], retry=False)[partition]
        except ClientError as exc:  # a leader moving (a broker lost): asked again at the next step, the loop polling meanwhile
            log.warning("changelog %s[%d]: end offset not read (%s); trying again", self._topic, partition, exc)
            self._unstarted[partition] = (store, started)
            return False
        if local > end:
            # The changelog is shorter than the store remembers: it was deleted and made again.
            log.warning("local store of partition %d is ahead of changelog %s (%d > %d): rebuilding it from the changelog",
                        partition, self._topic, local, end)
            store.wipe()
            local = 0
        start = max(local, first)
        if start >= end:
            if local < end:
                store.write({}, end)
            self._ready(partition, 0, started)
            return True
        log.info("restoring partition %d: changelog %s offsets %d to %d (local store at %d)",
                 partition, self._topic, start, end, local)
        self._pending[partition] = _Restoring(store, start, end, started)
        self._assign()
        return False

    def cancel(self, partition: int) -> None:
        """Stop restoring a partition (it moved elsewhere)."""
        self._unstarted.pop(partition, None)
        if self._pending.pop(partition, None) is not None:
            self._assign()

    def step(self, budget_s: float = RESTORE_CHUNK_S) -> set[int]:
        """Read and apply changelog records for up to ``budget_s``; return the partitions completed."""
        done: set[int] = set()
        for partition, (store, started) in list(self._unstarted.items()):
            del self._unstarted[partition]
            if self.start(partition, store, started):
                done.add(partition)
        deadline = time.monotonic() + budget_s
        try:
            while self._pending and time.monotonic() < deadline:
                batch = self._reader.poll(min(0.1, budget_s), MAX_POLL_RECORDS)
                for tp, records in batch.items():
                    restoring = self._pending.get(tp.partition)
                    if restoring is None:
                        continue
                    changes: dict[bytes, bytes | None] = {}
                    for record in records:
                        if record.offset >= restoring.end:
                            break
                        if record.key is not None:
                            changes[record.key] = record.value
                    restoring.records += len(changes)
                    restoring.position = max(restoring.position, records[-1].offset + 1)
                    restoring.store.write(changes, min(restoring.position, restoring.end))
                for partition, restoring in list(self._pending.items()):
                    # The position passes aborted records and transaction markers too.
                    position = self._reader.position(TopicPartition(self._topic, partition))
                    if max(position, restoring.position) >= restoring.end:
                        restoring.store.write({}, restoring.end)
                        self._ready(partition, restoring.records, restoring.started)
                        del self._pending[partition]
                        done.add(partition)
                if done:
                    self._assign()
                    break
        except ClientError as exc:
            log.warning("restoring from %s: %s (trying again)", self._topic, exc)
        return done

    def _ready(self, partition: int, records: int, started: float) -> None:
        took = time.monotonic() - started
        self.restored[partition] = (records, took)
        log.info("partition %d ready: %d change(s) from changelog %s in %.2fs", partition, records, self._topic, took)

    def _assign(self) -> None:
        self._reader.assign({TopicPartition(self._topic, p): r.position for p, r in self._pending.items()})

    def close(self) -> None:
        self._reader.close()


def _once(call: Callable[[], T]) -> T:
    return call()
