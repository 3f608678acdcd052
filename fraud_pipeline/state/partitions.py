"""The state of every partition a stage owns: local stores, their changelog, restores, commits and roll-backs.

The order of a commit, as quix-streams' checkpoint: the changes are sent to
the changelog (``send_changes``, inside the transaction under exactly-once),
the Delivery commits them with the routed records and the input offsets, and
only then are they written to the local stores (``committed``). A local store
is therefore never ahead of Kafka: after a crash it holds at most what was
committed, and the changelog's tail brings it up to date.

A roll-back (an aborted transaction, a failed flush or commit) forgets the
changes of what is rolled back and restores each owned partition from the
changelog's tail: a commit that timed out on our side but completed in Kafka
is then not lost, and one that did not complete leaves nothing behind.

Every ``OFFSET_CHECKPOINT_S`` after a commit the changelog's end offsets are
read and written to the stores: what a restart from the local store reads of
the changelog is what was written since (a few seconds of changes).

Each commit also sends, per partition, the next input offset it commits
(``INPUT_OFFSET_KEY``, as quix-streams heads its changelog records with the
offset they were processed at). A restored partition is read from that
offset: the group's committed offsets and the changelog's end are written by
the same transaction but become visible one after the other (its markers are
written after it commits), so a member taking a partition over may see one
without the other. When the state is ahead of the offsets the group returned,
the partition is read from the state's (the consumer's own look-up may be
older still); when it is behind, the changelog's tail is read again until it
catches up.

Under at-least-once nothing ties the changelog to the routed records: a stage
killed while flushing may leave the state's offset acknowledged and a routed
record not. The partition is then read from the group's committed offset
(``exactly_once=False``): what lies between is handled again, never skipped.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..clients import ClientError, Consumer, TopicPartition
from ..errors import PipelineError
from ..kafka_io import METADATA_TIMEOUT_S
from .changelog import Restorer
from .store import PartitionStore
from .table import PartitionTable

log = logging.getLogger(__name__)

OFFSET_CHECKPOINT_S = 5.0
"""How often the stores learn the changelog offset they cover (a broker round trip)."""
OFFSET_CHECKPOINT_TIMEOUT_S = 2.0
"""How long a commit may wait for the changelog's end offsets: past it the stores keep their last ones (a leader moving)."""
INPUT_OFFSET_KEY = b"\xff\xffinput.offset"
"""The next input offset of the partition's last commit, in the changelog and the store (the store's own key)."""
CATCH_UP_ATTEMPTS = 100
"""Restores of a partition's tail, 0.2 s apart, while its state is behind the group's committed offset."""

Send = Callable[[str, bytes | None, bytes | None, int], None]
"""``send(topic, key, value, partition)``: how changes reach the changelog (the stage's output)."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@contextmanager
def own_folder(state_dir: str | Path, group_id: str) -> Iterator[None]:
    """Hold ``state_dir``'s lock for ``group_id`` (``<group>.lock`` beside its stores) while the block runs.

    PipelineError at once if another process holds it: two detectors of one group with rules over other
    keys were seen to leave payments undecided when they shared one folder (docs/state.md); each needs its own.
    The OS lets go of the lock when the process dies.
    """
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(group_id)}.lock"
    handle = path.open("w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PipelineError(f"the state folder {folder} is in use by another detector of group {group_id} on this "
                                "host: with rules over other keys than the account, give each detector of a group its "
                                "own --state-dir") from None
        yield
    finally:
        handle.close()  # closing lets go of the lock


class PartitionStates:
    """Tables of the owned partitions of one source topic, kept in local stores under ``state_dir/<group>/``."""

    def __init__(
        self, state_dir: str | Path, group_id: str, source_topic: str, changelog: str, reader: Consumer,
        encode: Callable[[Any], bytes], decode: Callable[[bytes], Any], *, exactly_once: bool = True,
    ) -> None:
        self.folder = Path(state_dir) / _safe(group_id)
        self.source_topic = source_topic
        self.changelog = changelog
        self._restorer = Restorer(reader, changelog)
        self._encode = encode
        self._decode = decode
        self._exactly_once = exactly_once
        self.tables: dict[int, PartitionTable] = {}
        self._unpositioned: dict[int, int] = {}
        """Restored partitions whose input position is not set yet, with the restores tried."""
        self._sent: dict[int, dict[bytes, bytes]] = {}
        self._sealed: deque[tuple[int, dict[int, dict[bytes, bytes]]]] = deque()
        """Units sent and not yet durable, oldest first: each one's number and changes by partition."""
        self._units = 0
        self._checkpointed_at = time.monotonic()

    @property
    def restored(self) -> dict[int, tuple[int, float]]:
        """Per partition, the last restore's changes applied and seconds taken."""
        return self._restorer.restored

    def assigned(self, partitions: set[int]) -> set[int]:
        """Own exactly ``partitions`` now: close the stores of those gone, open and restore the new ones; the new ones."""
        for partition in set(self.tables) - partitions:
            self._restorer.cancel(partition)
            self._unpositioned.pop(partition, None)
            self.tables.pop(partition).store.close()
            self._sent.pop(partition, None)
        new = partitions - set(self.tables)
        for partition in sorted(new):
            started = time.monotonic()
            store = PartitionStore(self.folder / f"{_safe(self.source_topic)}-{partition}")
            self.tables[partition] = PartitionTable(partition, store, self._encode, self._decode)
            self._restorer.start(partition, store, started)
            self._unpositioned[partition] = 0
        return new

    def waiting(self) -> set[int]:
        """Partitions restoring, or restored but not yet positioned (see ``restore``)."""
        return self._restorer.pending | set(self._unpositioned)

    def restore(self, consumer: Consumer, budget_s: float) -> None:
        """A restore step; then each restored partition's input position set to its state's (see the module's doc)."""
        for partition in self._restorer.step(budget_s):
            self.tables[partition].forget_cache()
        for partition in [p for p in self._unpositioned if p not in self._restorer.pending]:
            self._position(consumer, partition)

    def _position(self, consumer: Consumer, partition: int) -> None:
        table = self.tables[partition]
        raw = table.store.get(INPUT_OFFSET_KEY)
        if raw is None or not self._exactly_once:  # the group's offset it is
            del self._unpositioned[partition]
            return
        state_at = int(raw)
        tp = TopicPartition(self.source_topic, partition)
        try:
            committed = consumer.committed([tp], METADATA_TIMEOUT_S).get(tp)
        except ClientError as exc:
            log.warning("partition %d: committed offset not read (%s); trying again", partition, exc)
            return
        if committed is not None and state_at < committed:
            tries = self._unpositioned[partition] = self._unpositioned[partition] + 1
            if tries < CATCH_UP_ATTEMPTS:
                time.sleep(0.2)  # the changelog's last transaction is committed, its markers not yet written
                self._restorer.start(partition, table.store)
                return
            log.warning("partition %d: its state stayed at input offset %d, behind the group's %d; going on from %d",
                        partition, state_at, committed, committed)
        # The consumer may have looked its offset up before the last transaction's markers were written: unless it
        # is already there, it reads from the state's.
        target = max(state_at, committed or 0)
        position = consumer.position(tp)
        log.info("partition %d: reading from input offset %d (the state's %d, the group's committed %s, the consumer at %d)",
                 partition, target, state_at, committed, position)
        if position != target:
            consumer.seek(tp, target)
        del self._unpositioned[partition]

    def has_state(self, partition: int) -> bool:
        """Whether a commit ever wrote the partition's state (in its store, from here or from the changelog)."""
        return self.tables[partition].store.get(INPUT_OFFSET_KEY) is not None

    def send_changes(self, send: Send, offsets: Mapping[int, int]) -> None:
        """Send every table's changes since the last commit, and the next input ``offsets``, to the changelog."""
        for partition, table in self.tables.items():
            changes = table.changes() if table.dirty else {}
            if partition in offsets:
                changes[INPUT_OFFSET_KEY] = str(offsets[partition]).encode()
            if changes:
                self._sent[partition] = changes
                for key, value in changes.items():
                    send(self.changelog, key, value, partition)

    def seal(self) -> None:
        """The changes sent since the last seal are one unit, committed later (``committed``, oldest first)."""
        unit = self._units
        self._units += 1
        for table in self.tables.values():
            table.seal(unit)
        self._sealed.append((unit, self._sent))
        self._sent = {}

    def committed(self) -> None:
        """The commit that carried the oldest sealed changes (none sealed: those sent, sealed now) succeeded: write them
        to the local stores."""
        if not self._sealed:
            self.seal()
        unit, sent = self._sealed.popleft()
        offsets: dict[int, tuple[int, int]] = {}
        if time.monotonic() - self._checkpointed_at >= OFFSET_CHECKPOINT_S:
            self._checkpointed_at = time.monotonic()
            try:
                offsets = self._restorer.ends([p for p in self.tables if p not in self._restorer.pending], retry=False,
                                              timeout_s=OFFSET_CHECKPOINT_TIMEOUT_S)
            except ClientError as exc:
                log.debug("changelog offsets not read (%s): the stores keep their last ones", exc)
        for partition, changes in sent.items():
            if partition in self.tables:
                table = self.tables[partition]
                # The changelog's end covers a later unit's changes too while one is on its way: not the store's then.
                end = offsets.pop(partition, (0, None))[1] if not table.sent_after(unit) else None
                table.committed(changes, end, unit)
        for partition, (_, end) in offsets.items():
            if not self.tables[partition].sent_after(None):
                self.tables[partition].store.write({}, end)

    def discard(self) -> None:
        """What was handled since the last commit was rolled back: forget its changes, catch up with the changelog's tail."""
        self._sent.clear()
        self._sealed.clear()
        for partition, table in self.tables.items():
            table.discard()
            if partition not in self._restorer.pending:
                table.forget_cache()
                self._restorer.start(partition, table.store)
                self._unpositioned.setdefault(partition, 0)

    def close(self) -> None:
        """Record how far the changelog is covered (so the next start reads little of it) and close the stores."""
        try:
            ready = [p for p in self.tables if p not in self._restorer.pending]
            for partition, (_, end) in self._restorer.ends(ready).items():
                if not self.tables[partition].dirty:
                    self.tables[partition].store.write({}, end)
        except (ClientError, PipelineError) as exc:
            log.debug("changelog offsets not read at close (%s)", exc)
        for table in self.tables.values():
            table.store.close()
        self.tables.clear()
        self._restorer.close()
