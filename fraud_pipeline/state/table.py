"""One partition's state as the rules engine reads and writes it: entities in memory over the partition's store.

The engine gets an entity, changes it, puts it back (rules.aggregates.EntityTable).
What it put since the last commit is *dirty*: kept in memory only, sent to the
changelog at the commit, and written to the local store once the commit
succeeded (``committed``). A roll-back drops the dirty entities (``discard``):
the store still holds their committed values, so the aborted records, read
again, start from exactly what was committed. Clean entities stay decoded in a
bounded cache, so a busy key is not decoded for every payment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .store import PartitionStore

CACHE_ENTITIES = 20_000
"""Clean entities kept decoded per partition (the oldest read first is dropped): bounds the memory per partition."""


class PartitionTable:
    """The entities of one partition: dirty ones in memory, the rest in its PartitionStore."""

    def __init__(
        self, partition: int, store: PartitionStore, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any],
        cache_entities: int = CACHE_ENTITIES,
    ) -> None:
        self.partition = partition
        self.store = store
        self._encode = encode
        self._decode = decode
        self._cache_entities = cache_entities
        self._dirty: dict[bytes, Any] = {}
        self._clean: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any | None:
        value = self._dirty.get(key)
        if value is not None:
            return value
        value = self._clean.get(key)
        if value is not None:
            return value
        raw = self.store.get(key)
        if raw is None:
            return None
        value = self._decode(raw)
        self._remember(key, value)
        return value

    def put(self, key: bytes, value: Any) -> None:
        self._dirty[key] = value
        self._clean.pop(key, None)

    def _remember(self, key: bytes, value: Any) -> None:
        clean = self._clean
        clean[key] = value
        if len(clean) > self._cache_entities:
            del clean[next(iter(clean))]

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def changes(self) -> dict[bytes, bytes]:
        """The dirty entities, encoded: what the commit sends to the changelog and then writes to the store."""
        encode = self._encode
        return {key: encode(value) for key, value in self._dirty.items()}

    def committed(self, changes: dict[bytes, bytes], changelog_offset: int | None = None) -> None:
        """The commit that carried ``changes`` succeeded: write them to the store; the entities become clean."""
        self.store.write(changes, changelog_offset)
        for key, value in self._dirty.items():
            self._remember(key, value)
        self._dirty.clear()

    def discard(self) -> None:
        """What was put since the last commit was rolled back: forget it."""
        self._dirty.clear()

    def forget_cache(self) -> None:
        """Drop every decoded entity (the store changed underneath: a restore)."""
        self._dirty.clear()
        self._clean.clear()

    def __len__(self) -> int:
        """Keys held (the store's estimate)."""
        return self.store.approximate_keys()
