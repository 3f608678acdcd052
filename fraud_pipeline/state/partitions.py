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
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..clients import ClientError, Consumer
from ..errors import PipelineError
from .changelog import Restorer
from .store import PartitionStore
from .table import PartitionTable

log = logging.getLogger(__name__)

OFFSET_CHECKPOINT_S = 5.0
"""How often the stores learn the changelog offset they cover (a broker round trip)."""

Send = Callable[[str, bytes | None, bytes | None, int], None]
"""``send(topic, key, value, partition)``: how changes reach the changelog (the stage's output)."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class PartitionStates:
    """Tables of the owned partitions of one source topic, kept in local stores under ``state_dir/<group>/``."""

    def __init__(
        self, state_dir: str | Path, group_id: str, source_topic: str, changelog: str, reader: Consumer,
        encode: Callable[[Any], bytes], decode: Callable[[bytes], Any],
    ) -> None:
        self.folder = Path(state_dir) / _safe(group_id)
        self.source_topic = source_topic
        self.changelog = changelog
        self._restorer = Restorer(reader, changelog)
        self._encode = encode
        self._decode = decode
        self.tables: dict[int, PartitionTable] = {}
        self._sent: dict[int, dict[bytes, bytes]] = {}
        self._checkpointed_at = time.monotonic()

    @property
    def restored(self) -> dict[int, tuple[int, float]]:
        """Per partition, the last restore's changes applied and seconds taken."""
        return self._restorer.restored

    def assigned(self, partitions: set[int]) -> set[int]:
        """Own exactly ``partitions`` now: close the stores of those gone, open and restore the new ones; the new ones."""
        for partition in set(self.tables) - partitions:
            self._restorer.cancel(partition)
            self.tables.pop(partition).store.close()
            self._sent.pop(partition, None)
        new = partitions - set(self.tables)
        for partition in sorted(new):
            started = time.monotonic()
            store = PartitionStore(self.folder / f"{_safe(self.source_topic)}-{partition}")
            self.tables[partition] = PartitionTable(partition, store, self._encode, self._decode)
            self._restorer.start(partition, store, started)
        return new

    def waiting(self) -> set[int]:
        return self._restorer.pending

    def restore(self, budget_s: float) -> None:
        for partition in self._restorer.step(budget_s):
            self.tables[partition].forget_cache()

    def send_changes(self, send: Send) -> None:
        """Send every table's changes since the last commit to the changelog, each to its partition."""
        for partition, table in self.tables.items():
            if table.dirty:
                changes = self._sent[partition] = table.changes()
                for key, value in changes.items():
                    send(self.changelog, key, value, partition)

    def committed(self) -> None:
        """The commit that carried the sent changes succeeded: write them to the local stores."""
        offsets: dict[int, tuple[int, int]] = {}
        if time.monotonic() - self._checkpointed_at >= OFFSET_CHECKPOINT_S:
            self._checkpointed_at = time.monotonic()
            try:
                offsets = self._restorer.ends([p for p in self.tables if p not in self._restorer.pending], retry=False)
            except ClientError as exc:
                log.debug("changelog offsets not read (%s): the stores keep their last ones", exc)
        for partition, changes in self._sent.items():
            if partition in self.tables:
                end = offsets.pop(partition, (0, None))[1]
                self.tables[partition].committed(changes, end)
        for partition, (_, end) in offsets.items():
            self.tables[partition].store.write({}, end)
        self._sent.clear()

    def discard(self) -> None:
        """What was handled since the last commit was rolled back: forget its changes, catch up with the changelog's tail."""
        self._sent.clear()
        for partition, table in self.tables.items():
            table.discard()
            if partition not in self._restorer.pending:
                table.forget_cache()
                self._restorer.start(partition, table.store)

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
