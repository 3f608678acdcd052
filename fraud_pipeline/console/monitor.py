"""The live pipeline as the console shows it, read from the pipeline's own topics.

One thread reads the payments, fraud, legit and dead-letter topics from
WINDOW_S back (outside any group: the console commits nothing and writes
nothing) and keeps, under one lock:

- counts per STEP_S bucket of record time, per topic, over the window;
- the latest fraud decisions (alerts) and dead letters, whole records;
- rule hits per bucket, from each routed record's ``decision`` header, shadow
  rules included;
- the rules in force: the baseline plus the rules topic, as a detector reads them;
- each consumer group's committed offsets, end offsets and lag, looked up
  every GROUPS_INTERVAL_S, with the lag's trend over TREND_S.

``state()`` is the JSON document the page's event stream sends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from typing import Any

import orjson

from ..clients import Admin, ClientError, Consumer, Record, TopicPartition, UnknownTopicError
from ..config import Settings
from ..kafka_io import connect, record_source
from ..live_rules import LiveRules
from ..rules import RuleSet
from .groups import lag, read_groups

log = logging.getLogger(__name__)

WINDOW_S = 900
"""What the charts, totals and rule hits cover: the last 15 minutes."""
STEP_S = 5
"""One chart point per this many seconds."""
RATE_S = 10
"""Rates are taken over the last this many seconds (of record time)."""
KEEP = 100
"""Alerts and dead letters kept, newest first."""
GROUPS_INTERVAL_S = 2.0
TREND_S = 10.0
"""A group's lag is falling or growing compared with this long ago."""
RETRY_S = 5.0
"""How long to wait before looking again for topics that do not exist yet."""


def text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def record_json(record: Record) -> dict[str, Any]:
    """A record as the page shows it: key and value as text, headers as [name, value] pairs."""
    return {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp, "key": text(record.key),
        "headers": [[name, text(value) or ""] for name, value in record.headers or ()],
        "value": text(record.value) or "",
    }


def parse_decision_header(value: bytes) -> list[tuple[str, int, str]]:
    """``fraud score=2 rules=burst@1 shadow=bitcoin@1`` -> [("burst", 1, "enabled"), ("bitcoin", 1, "shadow")]."""
    fired = []
    for part in value.decode("utf-8", errors="replace").split()[1:]:
        name, _, refs = part.partition("=")
        mode = {"rules": "enabled", "shadow": "shadow"}.get(name)
        if mode is None:
            continue
        for ref in refs.split(","):
            rule, _, version = ref.rpartition("@")
            if rule and version.isdigit():
                fired.append((rule, int(version), mode))
    return fired


def alert_json(record: Record) -> dict[str, Any]:
    """A fraud record with its payment and the decision's score and fired rules (None where unreadable)."""
    alert = record_json(record)
    payment: dict[str, Any] | None = None
    decision: dict[str, Any] = {}
    try:
        value = orjson.loads(record.value or b"")
        if isinstance(value, dict):
            decision = value.pop("DECISION", None) or {}
            payment = value
    except orjson.JSONDecodeError:
        pass
    alert["payment"] = payment
    alert["score"] = decision.get("score") if isinstance(decision, dict) else None
    alert["threshold"] = decision.get("threshold") if isinstance(decision, dict) else None
    rules = decision.get("rules") if isinstance(decision, dict) else None
    alert["rules"] = [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []
    return alert


def dead_letter_json(record: Record) -> dict[str, Any]:
    entry = record_json(record)
    headers = {name: value for name, value in entry["headers"]}
    entry["error"] = headers.get("error")
    source = [headers.get(f"source.{part}") for part in ("topic", "partition", "offset")]
    entry["source"] = "/".join(s for s in source if s is not None) or None
    return entry


class Monitor:
    """Reads the pipeline's topics in a thread (``run``); ``state()`` is safe from any thread."""

    def __init__(self, settings: Settings, baseline: RuleSet, *, window_s: int = WINDOW_S) -> None:
        self._settings = settings
        self._baseline = baseline
        self._window_s = window_s
        topics = settings.topics
        self._kinds = {topics.payments: "payments", topics.fraud: "fraud", topics.legit: "legit",
                       topics.dead_letter: "dead_letters"}
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[int]] = {kind: Counter() for kind in self._kinds.values()}
        self._hits: defaultdict[int, Counter[tuple[str, int, str]]] = defaultdict(Counter)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._dead_letters: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._rules: RuleSet = baseline
        self._groups: list[dict[str, Any]] = []
        self._lag_history: dict[tuple[str, str, int], deque[tuple[float, int]]] = {}
        self._errors: dict[str, str] = {}
        self.updated = threading.Event()
        """Set after each batch read (the event stream waits on it)."""

    # -- the reading thread ---------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read until ``stop``; a lost broker or a missing topic is reported on the page and retried."""
        backend = connect(self._settings)
        consumer = admin = rules_reader = None
        live_rules: LiveRules | None = None
        groups_at = 0.0
        try:
            while not stop.is_set():
                try:
                    if consumer is None:
                        consumer = self._open_reader(backend.consumer("fraud-console", None, max_records=2000))
                    if admin is None:
                        admin = backend.admin("fraud-console")
                    if live_rules is None:
                        rules_reader = self._open_rules_reader(backend.consumer("fraud-console-rules", None, max_records=500))
                        live_rules = LiveRules(self._baseline, rules_reader, lambda record, why: None)
                    if live_rules.refresh() or self._rules is not live_rules.current:
                        with self._lock:
                            self._rules = live_rules.current
                    batch = consumer.poll(0.5, 2000)
                    self._take(record for records in batch.values() for record in records)
                    if time.monotonic() - groups_at >= GROUPS_INTERVAL_S:
                        groups_at = time.monotonic()
                        self._look_at_groups(admin, consumer)
                    self._clear_error("kafka")
                except UnknownTopicError as exc:
                    self._set_error("kafka", f"{exc}: waiting for the pipeline to create it")
                    if consumer is not None:
                        consumer.close()
                        consumer = None
                    stop.wait(RETRY_S)
                except ClientError as exc:
                    self._set_error("kafka", f"reading Kafka: {exc}")
                    stop.wait(RETRY_S)
                self.updated.set()
        finally:
            for client in (consumer, rules_reader, admin):
                if client is not None:
                    client.close()

    def _open_reader(self, consumer: Consumer) -> Consumer:
        """Every partition of the four topics, from the first record stamped within the window."""
        since = int((time.time() - self._window_s) * 1000)
        tps = [TopicPartition(topic, p) for topic in self._kinds for p in sorted(consumer.partitions_for(topic, 10))]
        ends = consumer.watermarks(tps, 10)
        starts = consumer.offsets_for_times({tp: since for tp in tps}, 10)
        consumer.assign({tp: ends[tp][1] if (start := starts.get(tp)) is None else start for tp in tps})
        return consumer

    def _open_rules_reader(self, consumer: Consumer) -> Consumer:
        topic = self._settings.topics.rules
        try:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for(topic, 10))]
        except UnknownTopicError:
            tps = []  # no rules published yet: the baseline is in force
        consumer.assign({tp: first for tp, (first, _) in consumer.watermarks(tps, 10).items()})
        return consumer

    def _take(self, records: Iterable[Record]) -> None:
        step_ms = STEP_S * 1000
        with self._lock:
            for record in records:
                kind = self._kinds.get(record.topic)
                if kind is None:
                    continue
                bucket = record.timestamp // step_ms
                self._counts[kind][bucket] += 1
                if kind in ("fraud", "legit"):
                    for name, value in record.headers or ():
                        if name == "decision" and value:
                            self._hits[bucket].update(parse_decision_header(value))
                    if kind == "fraud":
                        self._alerts.appendleft(alert_json(record))
                elif kind == "dead_letters":
                    self._dead_letters.appendleft(dead_letter_json(record))
                    log.debug("dead letter %s", record_source(record))
            self._forget_before((int(time.time()) - self._window_s) * 1000 // step_ms)

    def _forget_before(self, bucket: int) -> None:
        for counts in self._counts.values():
            for old in [b for b in counts if b < bucket]:
                del counts[old]
        for old in [b for b in self._hits if b < bucket]:
            del self._hits[old]

    def _look_at_groups(self, admin: Admin, consumer: Consumer) -> None:
        """Each consumer group's lag on the pipeline's topics (groups reading other topics are left out)."""
        now = time.monotonic()
        groups = []
        for info, committed, ends in read_groups(admin, consumer, lambda topic: topic in self._kinds):
            if not committed:
                continue
            partitions: list[dict[str, Any]] = []
            for tp in sorted(committed):
                behind = lag(ends, tp, committed[tp]) or 0
                history = self._lag_history.setdefault((info.group, tp.topic, tp.partition), deque())
                history.append((now, behind))
                while len(history) > 1 and history[1][0] <= now - TREND_S:
                    history.popleft()
                partitions.append({"topic": tp.topic, "partition": tp.partition, "committed": committed[tp],
                                   "end": ends[tp][1] if tp in ends else None, "lag": behind,
                                   "trend": trend(history[0][1], behind)})
            total = sum(int(p["lag"]) for p in partitions)
            before = sum(self._lag_history[(info.group, tp.topic, tp.partition)][0][1] for tp in committed)
            groups.append({"group": info.group, "state": info.state, "lag": total, "trend": trend(before, total),
                           "members": len(info.members), "partitions": partitions})
        with self._lock:
            self._groups = groups

    def _set_error(self, source: str, message: str) -> None:
        with self._lock:
            if self._errors.get(source) != message:
                log.warning("%s", message)
            self._errors[source] = message

    def _clear_error(self, source: str) -> None:
        if source in self._errors:
            with self._lock:
                self._errors.pop(source, None)

    # -- what the page shows --------------------------------------------------

    def ruleset(self) -> RuleSet:
        """The rules in force as a detector reads them: the baseline plus the rules topic."""
        with self._lock:
            return self._rules

    def state(self) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        step_ms = STEP_S * 1000
        last = now_ms // step_ms
        buckets = range(last - self._window_s // STEP_S + 1, last + 1)
        with self._lock:
            series = {kind: [counts.get(b, 0) for b in buckets] for kind, counts in self._counts.items()}
            hits: Counter[tuple[str, int, str]] = Counter()
            for bucket in buckets:
                hits.update(self._hits.get(bucket, {}))
            rules = self._rules
            state = {
                "updated_ms": now_ms, "window_s": self._window_s,
                "alerts": list(self._alerts), "dead_letters": list(self._dead_letters),
                "groups": self._groups, "errors": list(self._errors.values()),
            }
        recent = RATE_S // STEP_S + 1  # the last buckets, the current one partly filled
        span_s = (recent - 1) * STEP_S + (now_ms % step_ms) / 1000
        totals = {kind: sum(values) for kind, values in series.items()}
        decided = totals["fraud"] + totals["legit"]
        state.update({
            "series": {"step_s": STEP_S, "start_ms": buckets[0] * step_ms, **series},
            "rates": {kind: round(sum(values[-recent:]) / span_s, 2) for kind, values in series.items()},
            "totals": totals,
            "fraud_rate": totals["fraud"] / decided if decided else None,
            "rules": rules_json(rules, self._baseline, hits),
        })
        return state


def trend(before: int, now: int) -> str:
    return "falling" if now < before else "growing" if now > before else "steady"


def rules_json(rules: RuleSet, baseline: RuleSet, hits: Counter[tuple[str, int, str]]) -> list[dict[str, Any]]:
    """The rules in force with their hits in the window; rules seen firing but no longer in force come last."""
    rows = []
    shown = set()
    for rule in rules.rules:
        key = (rule.id, rule.version, rule.mode)
        shown.add(key)
        rows.append({"id": rule.id, "version": rule.version, "mode": rule.mode, "weight": rule.weight,
                     "source": "baseline" if rule in baseline.rules else "topic", "hits": hits.get(key, 0)})
    for (rule_id, version, mode), count in sorted(hits.items()):
        if (rule_id, version, mode) not in shown:
            rows.append({"id": rule_id, "version": version, "mode": mode, "weight": None,
                         "source": "no longer in force", "hits": count})
    return rows
