"""The detectors' decision latency, read from their Prometheus endpoints (``--detector-metrics``).

Each detector started with ``--metrics-port`` serves
``fraud_decision_latency_seconds``: a payment's timestamp to its routed
record's acknowledgement. The console reads every endpoint it is given each
SCRAPE_S, adds their histograms up, and shows the median and 99th percentile
of the decisions of the last WINDOW_S (of a detector it has not watched that
long: since that detector started), estimated from the buckets as
Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

METRIC = "fraud_decision_latency_seconds"
WINDOW_S = 60.0
SCRAPE_S = 2.0
TIMEOUT_S = 1.5
"""How long one endpoint may take to answer."""

Buckets = tuple[tuple[float, float], ...]
"""A histogram's cumulative buckets: (upper bound, count), the last one +Inf."""


def endpoint_url(text: str) -> str:
    """``text`` if it is an http(s) URL with a host (nothing else is read: no file:// URLs), else ValueError."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL of a metrics endpoint: {text!r} (e.g. http://127.0.0.1:9401/metrics)")
    return text.strip()


def parse_buckets(text: str) -> Buckets | None:
    """The ``fraud_decision_latency_seconds`` buckets of a scrape, every label set added up; None if it has none."""
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{METRIC}_bucket":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return tuple(sorted(counts.items())) if counts else None


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of cumulative buckets, linear within its bucket; the highest finite bound past it; None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _minus(now: Buckets, before: Buckets | None) -> Buckets:
    """``now`` less ``before``; ``now`` alone when the two differ in bounds or a count fell (the detector restarted)."""
    if before is None or [b for b, _ in before] != [b for b, _ in now] or any(
        c < p for (_, c), (_, p) in zip(now, before, strict=True)
    ):
        return now
    return tuple((bound, count - old) for (bound, count), (_, old) in zip(now, before, strict=True))


class DecisionLatency:
    """Reads the detectors' endpoints in a thread of its own; ``state`` is what the page shows."""

    def __init__(self, urls: Sequence[str], window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        for url in urls:
            endpoint_url(url)
        self.urls = tuple(urls)
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._history: dict[str, deque[tuple[float, Buckets]]] = {url: deque() for url in self.urls}
        self._errors: dict[str, str] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.scrape()
            stop.wait(SCRAPE_S)

    def scrape(self) -> None:
        """Read every endpoint once."""
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    text = response.read().decode("utf-8", errors="replace")
                buckets = parse_buckets(text)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                self._error(url, f"decision latency: cannot read {url}: {getattr(exc, 'reason', None) or exc}")
                continue
            if buckets is None:
                self._error(url, f"decision latency: {url} has no {METRIC} (is it a detector's --metrics-port?)")
                continue
            now = self._clock()
            with self._lock:
                self._errors.pop(url, None)
                history = self._history[url]
                history.append((now, buckets))
                # keep the newest scrape at or before the window's start: the baseline of the window
                while len(history) > 1 and history[1][0] <= now - self._window_s:
                    history.popleft()

    def _error(self, url: str, message: str) -> None:
        with self._lock:
            if self._errors.get(url) != message:
                log.warning("%s", message)
            self._errors[url] = message

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors.values())

    def state(self) -> dict[str, Any]:
        """``{"p50_ms", "p99_ms", "count", "window_s", "detectors", "reachable"}``; the percentiles None without decisions."""
        now = self._clock()
        total: dict[float, float] = {}
        reachable = 0
        with self._lock:
            for url, history in self._history.items():
                reachable += bool(history) and url not in self._errors
                if not history or history[-1][0] <= now - self._window_s:
                    continue  # never read, or not for a whole window: none of its decisions are recent
                first_at, first = history[0]
                window = _minus(history[-1][1], first if first_at <= now - self._window_s else None)
                for bound, count in window:
                    total[bound] = total.get(bound, 0.0) + count
        buckets = tuple(sorted(total.items()))
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        return {
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "count": int(buckets[-1][1]) if buckets else 0,
            "window_s": self._window_s, "detectors": len(self.urls), "reachable": reachable,
        }
