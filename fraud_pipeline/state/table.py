"""One partition's state as the rules engine reads and writes it: entities in memory over the partition's store.

The engine gets an entity, changes it, puts it back (rules.aggregates.EntityTable).
What it put since the last commit is *dirty*: kept in memory only, sent to the
changelog at the commit, and written to the local store once the commit
succeeded (``committed``). Between the two it is *sealed* (``seal``): a commit
under at-least-once does not wait for its records' acknowledgements, so the
next unit's changes pile up meanwhile; entities sealed stay readable in
memory until their unit is durable. A roll-back drops the dirty and sealed
entities (``discard``): the store still holds their committed values, so the
aborted records, read again, start from exactly what was committed. Clean entities stay decoded in a
bounded cache, so a busy key is not decoded for every payment; so does a key the store does not hold,
so that it is not looked up for every payment (a rule set without state asks each time for the
partition's state it no longer keeps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .store import PartitionStore

_ABSENT = object()
"""In the cache of clean entities: the store holds no value for this key."""
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
        self._sealed: dict[bytes, tuple[int, Any]] = {}
        """Entities of units sent and not yet durable: the unit that last changed each, and its value."""
        self._clean: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any | None:
        value = self._dirty.get(key)
        if value is not None:
            return value
        sealed = self._sealed.get(key)
        if sealed is not None:
            return sealed[1]
        value = self._clean.get(key)
        if value is not None:
            return None if value is _ABSENT else value
        raw = self.store.get(key)
        if raw is None:
            self._remember(key, _ABSENT)
            return None
        value = self._decode(raw)
        self._remember(key, value)
        return value

    def put(self, key: bytes, value: Any) -> None:
        self._dirty[key] = value
        self._clean.pop(key, None)  # an absent mark too

    def _remember(self, key: bytes, value: Any) -> None:
        clean = self._clean
        clean[key] = value
        if len(clean) > self._cache_entities:
            del clean[next(iter(clean))]

    @property
    def dirty(self) -> bool:
        """Whether entities changed that the store does not hold yet (sent or not)."""
        return bool(self._dirty or self._sealed)

    def changes(self) -> dict[bytes, bytes]:
        """The dirty entities, encoded: what the commit sends to the changelog and then writes to the store."""
        encode = self._encode
        return {key: encode(value) for key, value in self._dirty.items()}

    def sent_after(self, unit: int | None) -> bool:
        """Whether changes of a unit after ``unit`` (None: any) are sent and not yet durable: in the changelog, not the store."""
        return any(unit is None or sealed_in > unit for sealed_in, _ in self._sealed.values())

    def seal(self, unit: int) -> None:
        """The dirty entities were sent to the changelog as ``unit``: kept apart until it is durable."""
        for key, value in self._dirty.items():
            self._sealed[key] = (unit, value)
        self._dirty.clear()

    def committed(self, changes: dict[bytes, bytes], changelog_offset: int | None, unit: int) -> None:
        """The commit that carried ``changes``, sealed as ``unit``, succeeded: write them to the store.

        Their entities become clean, unless a later unit changed them again.
        """
        self.store.write(changes, changelog_offset)
        for key in changes:
            sealed = self._sealed.get(key)
            if sealed is not None and sealed[0] == unit:
                del self._sealed[key]
                self._remember(key, sealed[1])

    def discard(self) -> None:
        """What was put since the last commit was rolled back: forget it."""
        self._dirty.clear()
        self._sealed.clear()

    def forget_cache(self) -> None:
        """Drop every decoded entity (the store changed underneath: a restore)."""
        self._dirty.clear()
        self._sealed.clear()
        self._clean.clear()

    def __len__(self) -> int:
        """Keys held (the store's estimate)."""
        return self.store.approximate_keys()
