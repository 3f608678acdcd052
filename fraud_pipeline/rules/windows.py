"""Per-key windows of recent payments: the state of the stateful rules.

One WindowState holds one partition's payments, grouped by each field a rule
groups by (ACCOUNT, TO, ...), in event-time order. It is bounded:

- a key keeps only the payments within the longest active window (plus the
  allowed lateness) of its newest one, and a key with nothing left in that span
  of the partition's newest payment is dropped;
- at most ``max_keys`` keys per partition (default 100,000): beyond that the
  least recently active key is forgotten and counted in ``evicted_keys``.

Event time is the payment's. A payment up to ALLOWED_LATENESS_MS older than
the newest one of its partition takes its place in the windows; an older one
is counted as if it were exactly that late.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator

from ..payment import Payment

ALLOWED_LATENESS_MS = 30_000
MAX_KEYS = 100_000
_SWEEP_EVERY = 1024

Event = tuple[int, Payment]


def _time(event: Event) -> int:
    return event[0]


class WindowState:
    """The recent payments of each key of one partition."""

    def __init__(self, group_fields: Iterable[str], retention_ms: int, max_keys: int = MAX_KEYS) -> None:
        self.group_fields = frozenset(group_fields)
        self.retention_ms = retention_ms
        self.max_keys = max_keys
        self.evicted_keys = 0
        self._windows: OrderedDict[tuple[str, str], deque[Event]] = OrderedDict()
        self._watermark: int | None = None
        self._adds = 0

    def covers(self, group_fields: Iterable[str], retention_ms: int) -> bool:
        """Whether this state holds what rules grouping by ``group_fields`` over ``retention_ms`` read."""
        return self.group_fields.issuperset(group_fields) and self.retention_ms >= retention_ms

    def event_time(self, event_ms: int) -> int:
        """The time a payment stamped ``event_ms`` counts at (see ALLOWED_LATENESS_MS)."""
        if self._watermark is None:
            return event_ms
        return max(event_ms, self._watermark - ALLOWED_LATENESS_MS)

    def events(self, field: str, key: str, now_ms: int, span_ms: int) -> Iterator[Event]:
        """The key's payments with ``now_ms - span_ms < time <= now_ms``, oldest first."""
        window = self._windows.get((field, key))
        if not window:
            return iter(())
        start = now_ms - span_ms
        return (event for event in window if start < event[0] <= now_ms)

    def count(self, field: str, key: str, now_ms: int, span_ms: int) -> int:
        """How many of the key's payments have ``now_ms - span_ms < time <= now_ms`` (by bisection)."""
        window = self._windows.get((field, key))
        if not window:
            return 0
        return bisect.bisect_right(window, now_ms, key=_time) - bisect.bisect_right(window, now_ms - span_ms, key=_time)

    def add(self, payment: Payment, keys: Iterable[tuple[str, str]], at_ms: int) -> None:
        """Record a payment (already clamped by event_time) under each of its ``(field, key)``."""
        if self._watermark is None or at_ms > self._watermark:
            self._watermark = at_ms
        horizon = at_ms - self.retention_ms - ALLOWED_LATENESS_MS
        for field_key in keys:
            window = self._windows.get(field_key)
            if window is None:
                window = self._windows[field_key] = deque()
                if len(self._windows) > self.max_keys:
                    self._windows.popitem(last=False)
                    self.evicted_keys += 1
            else:
                self._windows.move_to_end(field_key)
            if not window or window[-1][0] <= at_ms:
                window.append((at_ms, payment))
            else:  # late: keep event-time order
                window.insert(bisect.bisect_right(window, at_ms, key=_time), (at_ms, payment))
            while window[0][0] <= horizon:
                window.popleft()
        self._adds += 1
        if self._adds % _SWEEP_EVERY == 0:
            self._sweep()

    def _sweep(self) -> None:
        """Drop the least recently active keys whose payments all fell out of every window."""
        assert self._watermark is not None
        horizon = self._watermark - self.retention_ms - ALLOWED_LATENESS_MS
        while self._windows:
            field_key, window = next(iter(self._windows.items()))
            if window and window[-1][0] > horizon:
                break
            del self._windows[field_key]

    def __len__(self) -> int:
        """Keys held."""
        return len(self._windows)

    def payments(self) -> int:
        """Payments held, counted once per key they are held under."""
        return sum(len(window) for window in self._windows.values())
