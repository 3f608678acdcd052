"""Prometheus metrics of a running script (``--metrics-port``), collected when scraped.

The record path only bumps plain Python tallies (the Summary's outcome
counts, fired rules by decision, histogram buckets); the collector turns them
into metric families when Prometheus asks, so metrics cost next to nothing
per record. Names follow Prometheus' conventions: ``fraud_`` prefix, counters
ending in ``_total``, durations in seconds.

- ``fraud_records_total{stage, outcome}``: records committed, by outcome
  (fraud, legit, dead_lettered; the processors' printed kinds; sent);
- ``fraud_rule_fired_total{rule, version, mode}``: rule hits, shadow rules too
  (counted when decided: a batch read again after a rollback is counted again);
- ``fraud_decision_seconds``: record timestamp to routed (the detector's share of latency);
- ``fraud_decision_latency_seconds``: payment timestamp to its routed record's
  acknowledgement (at-least-once: the brokers' ``acks=all``; exactly-once:
  its transaction's commit), observed when its commit interval's unit settles;
- ``fraud_batch_seconds``: handling one poll's batch;
- ``fraud_transactions_total{result}``: committed, aborted, retried (exactly-once);
- ``fraud_transaction_step_seconds{step}``: each step of an exactly-once commit: ``flush`` (the
  records acknowledged), ``send_offsets`` (the input offsets added), ``commit``;
- ``fraud_consumer_lag{topic, partition}``: end offset (of the last fetch) minus position, every 5 s;
- ``fraud_window_keys{partition}``: keys held by the detector's windows;
- ``fraud_rules_info{rule, version, mode}``: 1 for each rule in force;
- ``fraud_late_probes_total``: probes of rules over other keys that came after their partition's marker had
  passed them (decided all the same, in the order they came; fraud_pipeline.topology.keys).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from .config import MetricsSettings
from .errors import PipelineError

log = logging.getLogger(__name__)

DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TRANSACTION_STEPS = ("flush", "send_offsets", "commit")
"""An exactly-once commit's steps, in order: the records acknowledged, the input offsets added, the transaction committed."""
LAG_INTERVAL_S = 5.0
"""How often a consumer's lag is taken from its client (the high watermarks of its last fetches)."""

K = TypeVar("K")
V = TypeVar("V")


class Histogram:
    """Bucket counts and a sum, kept in plain Python; turned into a histogram family when scraped."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, documentation, buckets=self.buckets(), sum_value=self.sum)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, ``+Inf`` last."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], list(self.counts), strict=True):
            total += count
            buckets.append((bound, total))
        return buckets


def snapshot(mapping: Mapping[K, V]) -> dict[K, V]:
    """A copy of a dict another thread may be adding keys to."""
    for _ in range(10):
        try:
            return dict(mapping)
        except RuntimeError:  # changed size during the copy: rare, try again
            continue
    return {}


class Metrics:
    """One process's metrics. Disabled (the default), the stages skip their per-record tallies."""

    def __init__(self, stage: str, *, enabled: bool = False) -> None:
        self.stage = stage
        self.enabled = enabled
        self.outcomes: Mapping[str, int] = Counter()
        """The Summary's counts: committed records by outcome."""
        self.outcome_names: dict[str, str] = {}
        """Outcome as counted (a topic name) to its label (``fraud``); others are lower-cased, ``-``/`` `` to ``_``."""
        self.decisions: dict[object, list[Any]] = {}
        """Per distinct decision (its cached header): ``[fired rules, count]``."""
        self.decision_seconds = Histogram(DECISION_BUCKETS)
        self.decision_latency_seconds = Histogram(DECISION_BUCKETS)
        self._unsealed: list[int] = []
        self._sealed: deque[list[int]] = deque()
        """Timestamps (ms) of the records routed in each unit sealed and not yet acknowledged, oldest first."""
        self.batch_seconds = Histogram(BATCH_BUCKETS)
        self.transactions: Counter[str] = Counter()
        self.transaction_seconds = {step: Histogram(BATCH_BUCKETS) for step in TRANSACTION_STEPS}
        self.lag: dict[tuple[str, int], int] = {}
        self.window_keys: Mapping[int, Sized] = {}
        self.rules: list[tuple[str, int, str]] = []
        self.late_probes = 0
        self.late_probes_of: Callable[[], int] | None = None
        """Where the late probes are counted when the key stage runs in another process."""
        self._lag_checked = 0.0

    def decided(self, timestamp_ms: int, key: object, fired: Iterable[Any]) -> None:
        """One routed record: its latency since its timestamp and its decision's fired rules."""
        self.decision_seconds.observe(time.time() - timestamp_ms / 1000)
        self._unsealed.append(timestamp_ms)
        entry = self.decisions.get(key)
        if entry is None:
            self.decisions[key] = [tuple((f.id, f.version, f.mode) for f in fired), 1]
        else:
            entry[1] += 1

    def sealed(self) -> None:
        """The records routed since the last seal are one unit, to be acknowledged together."""
        self._sealed.append(self._unsealed)
        self._unsealed = []

    def acknowledged(self) -> None:
        """The oldest sealed unit's records are acknowledged: their latency from timestamp to now."""
        if not self._sealed:
            return
        now_ms = time.time() * 1000
        observe = self.decision_latency_seconds.observe
        for timestamp_ms in self._sealed.popleft():
            observe((now_ms - timestamp_ms) / 1000)

    def rolled_back(self) -> None:
        """What was not acknowledged is read and routed again: its first routing is not counted."""
        self._unsealed.clear()
        self._sealed.clear()

    def lag_due(self) -> bool:
        """True at most every LAG_INTERVAL_S, when metrics are on."""
        if not self.enabled or time.monotonic() - self._lag_checked < LAG_INTERVAL_S:
            return False
        self._lag_checked = time.monotonic()
        return True

    def collect(self) -> Iterator[Metric]:
        records = CounterMetricFamily("fraud_records", "Records committed, by stage and outcome", labels=["stage", "outcome"])
        for outcome, count in sorted(snapshot(self.outcomes).items()):
            records.add_metric([self.stage, self._label(outcome)], count)
        yield records
        fired: Counter[tuple[str, int, str]] = Counter()
        for refs, count in snapshot(self.decisions).values():
            for ref in refs:
                fired[ref] += count
        rule_fired = CounterMetricFamily(
            "fraud_rule_fired", "Rule hits as decided, shadow rules too", labels=["rule", "version", "mode"],
        )
        for (rule, version, mode), count in sorted(fired.items()):
            rule_fired.add_metric([rule, str(version), mode], count)
        yield rule_fired
        yield self.decision_seconds.family("fraud_decision_seconds", "Record timestamp to routed by the detector")
        yield self.decision_latency_seconds.family("fraud_decision_latency_seconds",
                                                   "Payment timestamp to its routed record's acknowledgement")
        yield self.batch_seconds.family("fraud_batch_seconds", "Handling one poll's batch")
        steps = HistogramMetricFamily("fraud_transaction_step_seconds", "An exactly-once commit's steps, each",
                                      labels=["step"])
        for step, histogram in self.transaction_seconds.items():
            steps.add_metric([step], histogram.buckets(), histogram.sum)
        yield steps
        transactions = CounterMetricFamily("fraud_transactions", "Exactly-once transactions by result", labels=["result"])
        for result, count in sorted(snapshot(self.transactions).items()):
            transactions.add_metric([result], count)
        yield transactions
        late = CounterMetricFamily("fraud_late_probes", "Probes that came after their partition's marker had passed them")
        late.add_metric([], self.late_probes if self.late_probes_of is None else self.late_probes_of())
        yield late
        lag = GaugeMetricFamily("fraud_consumer_lag", "End offset minus the consumer's position", labels=["topic", "partition"])
        for (topic, partition), value in sorted(snapshot(self.lag).items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        keys = GaugeMetricFamily("fraud_window_keys", "Keys held by the detector's windows", labels=["partition"])
        for partition, state in sorted(snapshot(self.window_keys).items()):
            keys.add_metric([str(partition)], len(state))
        yield keys
        info = GaugeMetricFamily("fraud_rules_info", "The rules in force (1 each)", labels=["rule", "version", "mode"])
        for rule, version, mode in list(self.rules):
            info.add_metric([rule, str(version), mode], 1)
        yield info

    def _label(self, outcome: str) -> str:
        return self.outcome_names.get(outcome) or outcome.lower().replace("-", "_").replace(" ", "_")


def start(stage: str, settings: MetricsSettings | None) -> Metrics:
    """Serve ``stage``'s metrics on http://host:port/metrics (with the process's CPU and memory); port 0 or no settings: disabled."""
    if settings is None or settings.port <= 0:
        return Metrics(stage, enabled=False)
    host, port = settings.host, settings.port
    metrics = Metrics(stage, enabled=True)
    registry = CollectorRegistry()
    registry.register(metrics)  # a collector: anything with collect()
    ProcessCollector(registry=registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise PipelineError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return metrics
