"""The local store of one input partition's state: an embedded RocksDB (rocksdict), on disk.

It holds only what Kafka has committed: the stage writes to it after each
commit (the changelog records and the input offsets first, then the store),
in one atomic write batch with the changelog offset the store is known to
cover. That offset is a lower bound: replaying the changelog from it again is
harmless, since each changelog record is a key's whole value.

Why RocksDB: bench/store_choice.py measures it against LMDB on a million keys
(docs/performance.md, "The state store").
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch

from ..errors import PipelineError

log = logging.getLogger(__name__)

OFFSET_KEY = b"\xff\xffchangelog.offset"
"""The changelog offset the store covers; ``\\xff`` keys are the store's own (entities never start with it)."""
WRITE_BUFFER_BYTES = 8 * 1024 * 1024
"""Memtable size per partition: what one partition's store may hold in memory before it writes a file."""
LOCK_WAIT_S = 30.0
"""How long to wait for another process on this machine to let go of a partition's store (a hand-over)."""


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    options.set_max_background_jobs(1)
    return options


class PartitionStore:
    """Keys and values (bytes) of one partition, with the changelog offset they cover."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _open(path)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return value if value is None else bytes(value)

    def changelog_offset(self) -> int:
        """The changelog offset up to which the store is known to hold every change (0 for a new store)."""
        raw = self._db.get(OFFSET_KEY)
        return int(raw) if raw else 0

    def write(self, changes: Mapping[bytes, bytes | None], changelog_offset: int | None = None) -> None:
        """Apply ``changes`` (None deletes) and, if given, the new changelog offset, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
        try:
            self._db.write(batch)
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's message ("IO error: No space left ...")
            raise PipelineError(
                f"cannot write the state store {self.path}: {str(exc)[:300]}. What it was to hold is committed in its "
                "changelog: free the disk, then start the detector again (the store catches up from the changelog)"
            ) from None

    def items(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Entries from ``start`` in key order (the store's own keys left out)."""
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid():
            key = bytes(iterator.key())
            if key.startswith(b"\xff\xff"):
                break
            yield key, bytes(iterator.value())
            iterator.next()

    def approximate_keys(self) -> int:
        """RocksDB's estimate of the keys held."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def wipe(self) -> None:
        """Forget everything: the store is rebuilt from the whole changelog."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = _open(self.path)

    def close(self) -> None:
        try:
            self._db.close()
        except Exception as exc:  # a store whose write failed says so again at close: already reported, nothing to lose
            log.debug("closing the state store %s: %s", self.path, exc)


def _open(path: Path) -> Rdict:
    """Open the store at ``path``, waiting for another process's lock; a damaged store is rebuilt.

    The store only caches what the changelog holds, so a store RocksDB finds
    damaged (its files truncated, garbled or missing: "Corruption") is set
    aside and opened empty: the restore then replays the whole changelog,
    as Kafka Streams wipes a corrupted task's state. Any other failure
    (no space, no permission) stops the stage with RocksDB's reason.
    """
    path.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    rebuilt = False
    while True:
        try:
            return Rdict(str(path), _options(), access_type=AccessType.read_write())
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's message
            reason = str(exc)
            if "lock" in reason.lower() and time.monotonic() <= deadline:
                time.sleep(0.2)
                continue
            if reason.startswith("Corruption") and not rebuilt:
                log.warning("the state store %s is damaged (%s): rebuilding it from its changelog", path, reason[:300])
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True, exist_ok=True)
                rebuilt = True
                continue
            raise PipelineError(f"cannot open the state store {path}: {reason}") from None
