"""The fraud detector: decides each payment with the rules and routes it to the fraud or legit topic.

Prints the original tutorial's line per payment, ``<topic> <True|False> <PAYMENT_TYPE>``,
e.g. ``fraud_payments True BITCOIN``. The routed record is the input record's
key and value byte for byte with a ``DECISION`` field appended to the JSON
object (the original processors ignore it) and the decision in a header,
``decision: fraud score=2 rules=burst@1,large-to-stranger@1 shadow=bitcoin@1``
(``legit score=0`` when no rule fired).

Rules: the original BITCOIN rule by default, or a rules file (``--rules``),
with the rules topic applied on top while running (fraud_pipeline.live_rules).
Stateful rules read per-partition windows (fraud_pipeline.rules.windows).
A partition the detector gains (at start, or from a rebalance), or reads
again from an earlier offset (after a rolled-back batch, a failed commit or a
rebalance), has its windows rebuilt before its next batch is handled, by
re-reading its payments of the longest window (plus the allowed lateness and
clock skew) before that batch. Exactly-once by default (see fraud_pipeline.stage).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from .clients import Batch, Record
from .config import Settings, build_parser, require
from .errors import PipelineError
from .kafka_io import make_producer, make_topic_reader, read_span
from .live_rules import LiveRules, describe
from .metrics import Metrics
from .metrics import start as start_metrics
from .payment import MAX_CLOCK_SKEW_MS, InvalidPayment, decode, event_time, with_field
from .rules import ALLOWED_LATENESS_MS, ORIGINAL, Decision, Engine, RuleError, WindowState, load_ruleset
from .runtime import Summary, cli_main, run_cli
from .stage import BatchError, DeadLetters, LineBuffer, Output, decode_or_reject, run_stage
from .topics import prepare_topics

NAME = "fraud_detector"
DEFAULT_GROUP = "fraud-detector"
log = logging.getLogger(NAME)

Replay = Callable[[int, int, int], Iterator[Record]]
"""``replay(partition, since_ms, until_offset)``: the source partition's records in that span."""


@lru_cache(maxsize=4096)
def decision_header(decision: Decision) -> tuple[str, bytes]:
    """The ``decision`` header, e.g. ``fraud score=2 rules=burst@1,large-to-stranger@1 shadow=bitcoin@1``.

    One header, not one per item: kafka-python encodes headers in Python, and
    each one costs about 4 µs per record.
    """
    parts = ["fraud" if decision.fraud else "legit", f"score={decision.score:g}"]
    for mode, name in (("enabled", "rules"), ("shadow", "shadow")):
        refs = [f"{f.id}@{f.version}" for f in decision.fired if f.mode == mode]
        if refs:
            parts.append(f"{name}={','.join(refs)}")
    return ("decision", " ".join(parts).encode())


class Detector:
    """Decides and routes each payment record; unreadable records go to the dead-letter topic.

    Window state is kept per partition with the offset it has recorded up to.
    Before a batch is handled (outside its transaction), a partition without
    state, or whose batch starts before that offset (read again after a
    rollback, a failed commit or a rebalance), is rebuilt from the payments
    before the batch's first offset.
    """

    def __init__(
        self, output: Output, settings: Settings, dead_letters: DeadLetters, lines: LineBuffer, rules: LiveRules, replay: Replay,
        metrics: Metrics | None = None,
    ) -> None:
        self._output = output
        self._fraud_topic = settings.topics.fraud
        self._legit_topic = settings.topics.legit
        self._dead_letters = dead_letters
        self._lines = lines
        self._rules = rules
        self._replay = replay
        self._engine = Engine(rules.current)
        self._states: dict[int, WindowState] = {}
        self._metrics = metrics if metrics is not None and metrics.enabled else None
        if self._metrics is not None:
            self._metrics.window_keys = self._states
            self._metrics.rules = _rule_refs(self._engine)
        self._next_offsets: dict[int, int] = {}
        self._evicted: dict[int, int] = {}
        self.emit = lines.emit
        self.discard = lines.discard

    def begin_batch(self, batch: Batch) -> None:
        if self._rules.refresh():
            self._use(Engine(self._rules.current))
        if not self._engine.stateful:
            return
        for tp, records in batch.items():
            if records and self._stale(tp.partition, records[0].offset):
                self._rebuild(records[0])

    def _use(self, engine: Engine) -> None:
        ruleset = engine.ruleset
        if not engine.stateful:
            self._states.clear()  # nothing reads them; rebuilt if stateful rules come back
        elif any(not state.covers(ruleset.group_fields, ruleset.retention_ms) for state in self._states.values()):
            log.info("the new rules read more history than is held: rebuilding the windows of every partition")
            self._states.clear()
        self._engine = engine
        if self._metrics is not None:
            self._metrics.rules = _rule_refs(engine)

    def partitions_assigned(self, partitions: set[int]) -> None:
        # Windows of partitions still owned stay (their offsets tell if they must be rebuilt);
        # those of partitions gone elsewhere are dropped.
        for partition in set(self._states) - partitions:
            del self._states[partition]

    def handle(self, record: Record) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines)
        if payment is None:
            return
        at = event_time(payment, record.timestamp, int(time.time() * 1000))
        state = None
        if self._engine.stateful:
            if self._stale(record.partition, record.offset):
                self._rebuild(record)
            state = self._states[record.partition]
            self._next_offsets[record.partition] = record.offset + 1
        decision = self._engine.decide(payment, at, state)
        topic = self._fraud_topic if decision.fraud else self._legit_topic
        value = with_field(record.value or b"", "DECISION", decision.to_json())
        partition = self._output.partition_for(topic, record.partition)
        header = decision_header(decision)
        self._output.send(topic, record.key, value, [header], partition)
        if self._metrics is not None:
            self._metrics.decided(record.timestamp, header, decision.fired)
        self._lines.add(topic, f"{topic} {decision.fraud} {payment.payment_type}")
        if state is not None and state.evicted_keys != self._evicted.get(record.partition, 0):
            self._note_evictions(record.partition, state)

    def _note_evictions(self, partition: int, state: WindowState) -> None:
        """Log the first key a partition's full windows forget, then every thousandth."""
        before = self._evicted.get(partition, 0)
        self._evicted[partition] = state.evicted_keys
        if before == 0 or state.evicted_keys // 1000 > before // 1000:
            log.warning("windows of partition %d full (%d keys): %d least recently active key(s) forgotten so far",
                        partition, state.max_keys, state.evicted_keys)

    def _stale(self, partition: int, offset: int) -> bool:
        """Whether the windows of a partition cannot decide the record at ``offset``."""
        return partition not in self._states or offset < self._next_offsets.get(partition, 0)

    def _rebuild(self, first: Record) -> None:
        """The windows of a partition as of ``first``, from the partition's payments of the longest window before it."""
        started = time.monotonic()
        state = self._engine.new_state()
        reference = first.timestamp if first.timestamp > 0 else int(time.time() * 1000)
        since_ms = reference - state.retention_ms - ALLOWED_LATENESS_MS - MAX_CLOCK_SKEW_MS
        count = 0
        now_ms = int(time.time() * 1000)
        for record in self._replay(first.partition, since_ms, first.offset):
            try:
                payment = decode(record.value)
            except InvalidPayment:
                continue  # dead-lettered when it was first read
            self._engine.remember(payment, event_time(payment, record.timestamp, now_ms), state)
            count += 1
        self._states[first.partition] = state
        self._next_offsets[first.partition] = first.offset
        log.info(
            "rebuilt the windows of partition %d from %d payment(s) before offset %d in %.2fs",
            first.partition, count, first.offset, time.monotonic() - started,
        )


def _rule_refs(engine: Engine) -> list[tuple[str, int, str]]:
    return [(rule.id, rule.version, rule.mode) for rule in engine.ruleset.rules]


@contextmanager
def live_rules(settings: Settings) -> Iterator[tuple[LiveRules, Replay]]:
    """The detector's rules, caught up with the rules topic, and how to replay a payments partition."""
    rules_file = require(settings.detector, "detector").rules_file
    if rules_file is None:
        baseline = ORIGINAL
    else:
        try:
            baseline = load_ruleset(rules_file)
        except RuleError as exc:
            raise PipelineError(f"rules file refused: {exc}") from None
    rejects = Output(make_producer(settings, f"{NAME}-rules"))
    rejected = DeadLetters(rejects, settings.topics.rules_rejected, NAME)

    def reject(record: Record, reason: str) -> None:
        rejected.send(record, reason)
        try:
            rejects.flush(timeout_s=10)
        except BatchError as exc:
            log.error("could not write the rejected rule record to %s: %s", settings.topics.rules_rejected, exc)

    def replay(partition: int, since_ms: int, until_offset: int) -> Iterator[Record]:
        return read_span(
            settings, settings.topics.payments, partitions=[partition], since_ms=since_ms,
            until_offsets={partition: until_offset}, client_id=f"{NAME}-replay",
        )

    try:
        reader = make_topic_reader(settings, settings.topics.rules, f"{NAME}-rules")
        try:
            rules = LiveRules(baseline, reader, reject)
            rules.catch_up()
            log.info("rules (%s, then topic %s): %s", rules_file or "original", settings.topics.rules, describe(rules.current))
            yield rules, replay
        finally:
            reader.close()
    finally:
        rejects.producer.close()


def run(settings: Settings, stop: threading.Event) -> int:
    topics = settings.topics
    prepare_topics(settings, reads=[topics.payments, topics.rules],
                   writes=[topics.fraud, topics.legit, topics.dead_letter, topics.rules_rejected])
    metrics = start_metrics(NAME, settings.metrics)
    metrics.outcome_names = {topics.fraud: "fraud", topics.legit: "legit"}
    with live_rules(settings) as (rules, replay):
        return run_stage(
            settings, name=NAME, source_topic=settings.topics.payments, stop=stop, summary=Summary(NAME, "payments"),
            make_handler=lambda output, dead_letters, lines: Detector(output, settings, dead_letters, lines, rules, replay, metrics),
            metrics=metrics,
        )


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        NAME,
        "Read payments, decide each one with the fraud rules and route it: fraud topic when the score of the "
        "rules that fire reaches the threshold (by default, the original rule: BITCOIN is fraud), legit topic "
        "otherwise. Prints '<topic> <True|False> <PAYMENT_TYPE>' per payment; unreadable records go to the "
        "dead-letter topic.",
        consumes="the payments topic",
        default_group=DEFAULT_GROUP,
        transactional=True,
    )
    return run_cli(NAME, parser.parse_args(argv), run)
