"""The state of stateful rules: bounded, bucketed aggregates per key, in a key-value table.

Pure Python, no Kafka. The engine reads and writes one value (an ``Entity``)
per key through an ``EntityTable``: a ``MemoryTable`` here, a RocksDB store
with a Kafka changelog in the detector. Values are encoded with
``encode_entity``/``decode_entity``: deterministic (the same history gives the
same bytes) and ``encode_entity(decode_entity(b)) == b``.

Keys
----
A group key names the fields and their values, in GROUP_FIELDS order
(ACCOUNT, TO, PAYMENT_TYPE, CARD, DEVICE, IP, MERCHANT)::

    b"ACCOUNT=ACC00042"
    b"ACCOUNT,TO=ACC00042\\x1fstranger"      # compound: values joined by 0x1F

UTF-8; a payment's text never holds a control character (payment.decode
refuses them), so 0x1F cannot occur inside a value. A payment lacking any of
the fields is not grouped. Keys starting with 0x00 are reserved for the
partition's own bookkeeping: ``META_KEY`` holds a ``PartitionState`` (the
event-time watermark, and since when each series has been recorded).

Series and buckets
------------------
Under a key, each series is one thing the rules read, named by a short id
(``SeriesPlan.sid``): its kind, its bucket width, its field and a hash of its
``where`` (or of a sequence's ``first``)::

    n1s             count (and first time) of every payment, 1 s buckets
    v60s:AMOUNT|..  count, sum, sum of squares, min, max of AMOUNT where ..., 1 min buckets
    d1800s:ACCOUNT  distinct ACCOUNT values, 30 min buckets
    s1s|..          recent payments matching a sequence's first condition

A rule's window W picks the bucket width w: the first of BUCKET_LADDER_MS
with W <= 60 w (60 s -> 1 s, 1 h -> 1 min, 24 h -> 30 min, 30 d -> 12 h), so
a window spans at most 61 buckets. Rules whose windows share a width (and
field and where) share the series. A payment at event time t falls in bucket
t // w. A series keeps the buckets a window of up to 60 w can still read
given the allowed lateness (at most 60 + ceil(ALLOWED_LATENESS_MS / w) + 1
buckets), whatever the rate; expired buckets are dropped when the key is next
written.

Window semantics
----------------
At time ``now`` a window of W reads the buckets from ``(now - W) // w`` to
``now // w`` included. So it holds every payment of ``(now - W, now]``, plus
those of the oldest bucket before ``now - W`` (at most one bucket width
older: the window's start is exact to one bucket width, never later than
exact), plus, for a late payment, those after it in its own bucket. ``count``,
``sum``, ``avg``, ``min``, ``max``, ``age`` and ``zscore`` are exact over that
set. ``distinct`` keeps, per value, the last bucket it was seen in: exact
over the set for up to MAX_EXACT_DISTINCT values per key and series (a late
payment's count also includes values seen only after it); beyond that, one
HyperLogLog sketch per bucket (Apache DataSketches, lg_k = HLL_LG_K: relative
standard error about 2.3 %, within 6.9 % at three standard deviations), until
those buckets expire. Sequences keep exact times: the SEQUENCE_KEEP most recent
payments matching ``first``, with the text their explanation needs.
"""

from __future__ import annotations

import base64
import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Protocol

import orjson
from datasketches import hll_sketch, hll_union

ALLOWED_LATENESS_MS = 30_000
"""A payment up to this much older than the newest of its partition counts at its own time; an older one counts
as if it were exactly that late."""
BUCKETS_PER_WINDOW = 60
BUCKET_LADDER_MS = tuple(s * 1000 for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                                             21600, 43200))
"""The bucket widths; a window of W uses the first w with W <= BUCKETS_PER_WINDOW * w."""
MAX_EXACT_DISTINCT = 1000
HLL_LG_K = 11
"""log2 of the HyperLogLog sketches' registers: 2048 registers, ~1 KB a sketch, relative standard error ~2.3 %."""
SEQUENCE_KEEP = 32
META_KEY = b"\x00partition"
SEPARATOR = "\x1f"


def bucket_width_ms(window_ms: int) -> int:
    """The bucket width a window of ``window_ms`` is kept in."""
    for width in BUCKET_LADDER_MS:
        if window_ms <= BUCKETS_PER_WINDOW * width:
            return width
    raise ValueError(f"a window of {window_ms} ms is longer than {BUCKETS_PER_WINDOW} buckets of the widest width")


def where_hash(text: str) -> str:
    """A short, stable name for a condition (its ``describe()`` text) in series ids."""
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def series_id(kind: str, width_ms: int, field: str | None = None, condition: str | None = None) -> str:
    """``kind`` (n, v, d, s), the width in seconds, the field, the hash of the condition's text."""
    sid = f"{kind}{width_ms // 1000}s"
    if field:
        sid += f":{field}"
    if condition:
        sid += f"|{where_hash(condition)}"
    return sid


@lru_cache(maxsize=1024)
def width_of(sid: str) -> int:
    """The bucket width (ms) a series id names."""
    return int(sid[1:sid.index("s", 1)]) * 1000


# --- series -----------------------------------------------------------------------------------------


class Counts:
    """Per bucket: how many payments, and the time of the first one (for ``count`` and ``age``)."""

    __slots__ = ("cnt", "first", "idx", "width")

    def __init__(self, width: int, idx: list[int] | None = None, cnt: list[int] | None = None,
                 first: list[int] | None = None) -> None:
        self.width = width
        self.idx: list[int] = idx if idx is not None else []
        """Bucket numbers (time // width), ascending; only buckets with payments."""
        self.cnt: list[int] = cnt if cnt is not None else []
        self.first: list[int] = first if first is not None else []

    def add(self, at_ms: int) -> None:
        b = at_ms // self.width
        idx = self.idx
        if idx and idx[-1] == b:
            self.cnt[-1] += 1
            if at_ms < self.first[-1]:
                self.first[-1] = at_ms
        elif not idx or idx[-1] < b:
            idx.append(b)
            self.cnt.append(1)
            self.first.append(at_ms)
        else:  # late
            i = bisect_left(idx, b)
            if idx[i] == b:
                self.cnt[i] += 1
                self.first[i] = min(self.first[i], at_ms)
            else:
                idx.insert(i, b)
                self.cnt.insert(i, 1)
                self.first.insert(i, at_ms)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The positions ``i:j`` of the buckets numbered ``start`` to ``end``, both included."""
        idx = self.idx
        if not idx:
            return 0, 0
        i = bisect_left(idx, start) if idx[0] < start else 0
        j = len(idx) if idx[-1] <= end else bisect_right(idx, end)
        return i, j

    def prune(self, horizon_ms: int) -> bool:
        """Drop the buckets no window can read once the watermark minus the lateness is ``horizon_ms``; False if empty."""
        idx = self.idx
        width = self.width
        oldest = (horizon_ms - BUCKETS_PER_WINDOW * width) // width
        if idx and idx[0] < oldest:
            i = bisect_left(idx, oldest)
            del idx[:i], self.cnt[:i], self.first[:i]
        return bool(idx)

    def data(self) -> list[Any]:
        return [self.idx, self.cnt, self.first]


class Values(Counts):
    """Per bucket: count, first time, and the sum, sum of squares, min and max of a numeric field."""

    __slots__ = ("hi", "lo", "sq", "sum")

    def __init__(self, width: int, idx: list[int] | None = None, cnt: list[int] | None = None,
                 first: list[int] | None = None, sums: list[float] | None = None, sq: list[float] | None = None,
                 lo: list[float] | None = None, hi: list[float] | None = None) -> None:
        super().__init__(width, idx, cnt, first)
        self.sum: list[float] = sums if sums is not None else []
        self.sq: list[float] = sq if sq is not None else []
        self.lo: list[float] = lo if lo is not None else []
        self.hi: list[float] = hi if hi is not None else []

    def add_value(self, at_ms: int, value: float) -> None:
        b = at_ms // self.width
        idx = self.idx
        if idx and idx[-1] == b:
            i = len(idx) - 1
        elif not idx or idx[-1] < b:
            idx.append(b)
            self.cnt.append(1)
            self.first.append(at_ms)
            self.sum.append(value)
            self.sq.append(value * value)
            self.lo.append(value)
            self.hi.append(value)
            return
        else:
            i = bisect_left(idx, b)
            if idx[i] != b:
                idx.insert(i, b)
                self.cnt.insert(i, 1)
                self.first.insert(i, at_ms)
                self.sum.insert(i, value)
                self.sq.insert(i, value * value)
                self.lo.insert(i, value)
                self.hi.insert(i, value)
                return
        self.cnt[i] += 1
        if at_ms < self.first[i]:
            self.first[i] = at_ms
        self.sum[i] += value
        self.sq[i] += value * value
        if value < self.lo[i]:
            self.lo[i] = value
        if value > self.hi[i]:
            self.hi[i] = value

    def prune(self, horizon_ms: int) -> bool:
        idx = self.idx
        width = self.width
        oldest = (horizon_ms - BUCKETS_PER_WINDOW * width) // width
        if idx and idx[0] < oldest:
            i = bisect_left(idx, oldest)
            del idx[:i], self.cnt[:i], self.first[:i], self.sum[:i], self.sq[:i], self.lo[:i], self.hi[:i]
        return bool(idx)

    def data(self) -> list[Any]:
        return [self.idx, self.cnt, self.first, self.sum, self.sq, self.lo, self.hi]


class Distinct:
    """The distinct values of a field: value -> last bucket seen, exact up to MAX_EXACT_DISTINCT values, then
    one HyperLogLog sketch per bucket until they all expire."""

    __slots__ = ("oldest", "seen", "sketches", "width")

    def __init__(self, width: int, seen: dict[str, int] | None = None, sketches: dict[int, hll_sketch] | None = None) -> None:
        self.width = width
        self.seen: dict[str, int] | None = seen if seen is not None or sketches is not None else {}
        self.sketches: dict[int, hll_sketch] | None = sketches
        self.oldest = min(self.seen.values()) if self.seen else 1 << 62
        """A lower bound of the oldest bucket in ``seen`` (prune's shortcut; not stored)."""

    def add(self, at_ms: int, value: str) -> None:
        b = at_ms // self.width
        seen = self.seen
        if seen is not None:
            last = seen.get(value)
            if last is None or last < b:
                seen[value] = b
                if b < self.oldest:
                    self.oldest = b
                if last is None and len(seen) > MAX_EXACT_DISTINCT:
                    self._to_sketches(seen)
            return
        assert self.sketches is not None
        sketch = self.sketches.get(b)
        if sketch is None:
            sketch = self.sketches[b] = hll_sketch(HLL_LG_K)
        sketch.update(value)

    def _to_sketches(self, seen: dict[str, int]) -> None:
        sketches: dict[int, hll_sketch] = {}
        for value, b in seen.items():
            sketch = sketches.get(b)
            if sketch is None:
                sketch = sketches[b] = hll_sketch(HLL_LG_K)
            sketch.update(value)
        self.sketches = dict(sorted(sketches.items()))
        self.seen = None

    def count(self, start: int, value: str | None) -> int:
        """Distinct values seen in bucket ``start`` or later, ``value`` (the current payment's) included."""
        seen = self.seen
        if seen is not None:
            if self.oldest >= start:
                n = len(seen)
            else:
                n = 0
                for b in seen.values():
                    if b >= start:
                        n += 1
            if value is not None:
                last = seen.get(value)
                if last is None or last < start:
                    n += 1
            return n
        assert self.sketches is not None
        union = hll_union(HLL_LG_K)
        for b, sketch in self.sketches.items():
            if b >= start:
                union.update(sketch)
        if value is not None:
            union.update(value)
        return round(union.get_estimate())

    def prune(self, horizon_ms: int) -> bool:
        width = self.width
        oldest = (horizon_ms - BUCKETS_PER_WINDOW * width) // width
        seen = self.seen
        if seen is not None:
            if self.oldest < oldest:
                self.seen = seen = {v: b for v, b in seen.items() if b >= oldest}
                self.oldest = min(seen.values()) if seen else 1 << 62
            return bool(seen)
        assert self.sketches is not None
        if any(b < oldest for b in self.sketches):
            self.sketches = {b: s for b, s in self.sketches.items() if b >= oldest}
            if not self.sketches:
                self.sketches = None
                self.seen = {}
                return False
        return True

    def data(self) -> list[Any]:
        if self.seen is not None:
            return ["exact", list(self.seen), list(self.seen.values())]
        assert self.sketches is not None
        return ["hll", [[b, base64.b64encode(s.serialize_compact()).decode()] for b, s in sorted(self.sketches.items())]]


class Firsts:
    """The most recent payments matching a sequence's ``first`` (at most SEQUENCE_KEEP): time and explanation."""

    __slots__ = ("texts", "times", "width")

    def __init__(self, width: int, times: list[int] | None = None, texts: list[str] | None = None) -> None:
        self.width = width
        self.times: list[int] = times if times is not None else []
        self.texts: list[str] = texts if texts is not None else []

    def add(self, at_ms: int, text: str) -> None:
        times = self.times
        if not times or times[-1] <= at_ms:
            times.append(at_ms)
            self.texts.append(text)
        else:
            i = bisect_right(times, at_ms)
            times.insert(i, at_ms)
            self.texts.insert(i, text)
        if len(times) > SEQUENCE_KEEP:
            del times[0], self.texts[0]

    def latest(self, now_ms: int, within_ms: int) -> int:
        """The position of the latest payment with ``now - within < time <= now``, else -1."""
        times = self.times
        if not times:
            return -1
        i = len(times) - 1 if times[-1] <= now_ms else bisect_right(times, now_ms) - 1
        return i if i >= 0 and times[i] > now_ms - within_ms else -1

    def prune(self, horizon_ms: int) -> bool:
        times = self.times
        oldest = horizon_ms - BUCKETS_PER_WINDOW * self.width
        if times and times[0] <= oldest:
            i = bisect_right(times, oldest)
            del times[:i], self.texts[:i]
        return bool(times)

    def data(self) -> list[Any]:
        return [self.times, self.texts]


Series = Counts | Values | Distinct | Firsts


def new_series(sid: str) -> Series:
    """An empty series of the kind its id names."""
    width = width_of(sid)
    kind = sid[0]
    if kind == "n":
        return Counts(width)
    if kind == "v":
        return Values(width)
    if kind == "d":
        return Distinct(width)
    if kind == "s":
        return Firsts(width)
    raise ValueError(f"unknown series kind in {sid!r}")


# --- entities ---------------------------------------------------------------------------------------


class KeyState:
    """The value of one group key: its series by id."""

    __slots__ = ("series",)

    def __init__(self, series: dict[str, Series] | None = None) -> None:
        self.series: dict[str, Series] = series if series is not None else {}

    def prune(self, horizon_ms: int) -> None:
        """Drop what no window can read any more (``horizon_ms``: the watermark minus the allowed lateness)."""
        empty = [sid for sid, series in self.series.items() if not series.prune(horizon_ms)]
        for sid in empty:
            del self.series[sid]


class PartitionState:
    """The partition's bookkeeping, under META_KEY: the watermark and since when each series is recorded."""

    __slots__ = ("signature", "since", "watermark")

    def __init__(self, watermark: int | None = None, signature: str = "", since: dict[str, int] | None = None) -> None:
        self.watermark = watermark
        """The newest event time recorded (None: nothing yet)."""
        self.signature = signature
        """The series ids of the engine that last recorded, joined: another engine reconciles ``since``."""
        self.since: dict[str, int] = since if since is not None else {}
        """Series id -> event time of the first payment recorded in it on this table (continuously since)."""


Entity = KeyState | PartitionState


class EntityTable(Protocol):
    """Where the engine keeps its state: one Entity per key (a group key, or META_KEY)."""

    def get(self, key: bytes) -> Entity | None:
        """The object last put for key, else decoded from storage, else None."""

    def put(self, key: bytes, value: Entity) -> None:
        """Store ``value`` (the engine puts after changing an entity, possibly the object it got)."""


class MemoryTable:
    """A dict-backed EntityTable; ``round_trip=True`` stores bytes (encode on put, decode on get)."""

    __slots__ = ("data", "round_trip")

    def __init__(self, round_trip: bool = False) -> None:
        self.round_trip = round_trip
        self.data: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Entity | None:
        value = self.data.get(key)
        if value is None or not self.round_trip:
            return value
        return decode_entity(value)

    def put(self, key: bytes, value: Entity) -> None:
        self.data[key] = encode_entity(value) if self.round_trip else value

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.data)

    def encoded(self, key: bytes) -> bytes | None:
        """The bytes of a key's value (as a changelog would hold them)."""
        value = self.data.get(key)
        return value if value is None or isinstance(value, bytes) else encode_entity(value)


# --- encoding ---------------------------------------------------------------------------------------

_KEY_STATE = 1
_PARTITION_STATE = 0


def encode_entity(value: Entity) -> bytes:
    """Compact JSON: ``[1, [[sid, data], ...]]`` for a key (series sorted by id), ``[0, watermark, signature,
    [[sid, since], ...]]`` for the partition. Deterministic; ``encode_entity(decode_entity(b)) == b``."""
    if isinstance(value, KeyState):
        return orjson.dumps([_KEY_STATE, [[sid, value.series[sid].data()] for sid in sorted(value.series)]])
    return orjson.dumps([_PARTITION_STATE, value.watermark, value.signature, sorted(value.since.items())])


def decode_entity(data: bytes) -> Entity:
    """The entity ``encode_entity`` wrote; ValueError if ``data`` is not one."""
    try:
        raw = orjson.loads(data)
        if raw[0] == _PARTITION_STATE:
            _, watermark, signature, since = raw
            return PartitionState(watermark, signature, {sid: at for sid, at in since})
        if raw[0] != _KEY_STATE:
            raise ValueError(f"unknown entity tag {raw[0]!r}")
        return KeyState({sid: _decode_series(sid, fields) for sid, fields in raw[1]})
    except (orjson.JSONDecodeError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"not an encoded entity: {exc}") from None


def _decode_series(sid: str, fields: list[Any]) -> Series:
    width = width_of(sid)
    kind = sid[0]
    if kind == "n":
        return Counts(width, *fields)
    if kind == "v":
        return Values(width, *fields)
    if kind == "d":
        if fields[0] == "exact":
            return Distinct(width, dict(zip(fields[1], fields[2], strict=True)))
        return Distinct(width, sketches={b: hll_sketch.deserialize(base64.b64decode(s)) for b, s in fields[1]})
    if kind == "s":
        return Firsts(width, *fields)
    raise ValueError(f"unknown series kind in {sid!r}")
