"""The fraud detector: decides each payment with the rules and routes it to the fraud or legit topic.

Prints the original tutorial's line per payment, ``<topic> <True|False> <PAYMENT_TYPE>``,
e.g. ``fraud_payments True BITCOIN``. The routed record is the input record's
key and value byte for byte with a ``DECISION`` field appended to the JSON
object (the original processors ignore it) and the decision in a header,
``decision: fraud score=2 rules=burst@1,large-to-stranger@1 shadow=bitcoin@1``
(``legit score=0`` when no rule fired).

Rules: the original BITCOIN rule by default, or a rules file (``--rules``),
with the rules topic applied on top while running (fraud_pipeline.live_rules).
Stateful rules read bucketed aggregates per key (fraud_pipeline.rules.aggregates),
kept per input partition in a local RocksDB store under ``--state-dir`` and
in the compacted changelog topic ``<group>-payments-changelog``
(fraud_pipeline.state): a partition the detector gains is restored from its
local store and the changelog's tail before its payments are decided, its
input held back meanwhile while the consumer keeps polling. At start the
changelog must have the input's partition count, and no rule may read a
window longer than the changelog keeps. Exactly-once by default (see
fraud_pipeline.stage): the state's changes go in the same transaction as the
routed records and the input offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from .clients import Batch, Consumer, Record
from .config import EXACTLY_ONCE, Settings, build_parser, require
from .errors import PipelineError
from .features import (
    Chain,
    FeatureStage,
    Hop,
    carried,
    decision_topic,
    plan,
    refuse_new_groups,
    rekeyed_groups,
    rules_of,
    stage_settings,
    stop_all_on_failure,
    with_carried,
)
from .kafka_io import make_groupless_consumer, make_producer, make_topic_reader, read_span
from .live_rules import LiveLists, LiveRules, describe
from .metrics import Metrics
from .metrics import start as start_metrics
from .payment import MAX_CLOCK_SKEW_MS, InvalidPayment, decode, event_time, with_field
from .rules import ALLOWED_LATENESS_MS, ORIGINAL, Decision, Engine, RuleError, RuleSet, decode_entity, encode_entity, load_ruleset
from .rules.definitions import group_label
from .rules.lists import APPROVE, DECLINE, LISTS, REVIEWED
from .runtime import Summary, cli_main, run_cli
from .stage import BatchError, DeadLetters, LineBuffer, Output, RecordHandler, decode_or_reject, run_stage
from .state import PartitionStates, changelog_topic
from .topics import prepare_changelog, prepare_internal_topics, prepare_topics, retention_limits

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
    outcome = decision.outcome
    parts = ["fraud" if outcome == DECLINE else "review" if outcome == REVIEWED else "legit", f"score={decision.score:g}"]
    for mode, name in (("enabled", "rules"), ("shadow", "shadow")):
        refs = [f"{f.id}@{f.version}" for f in decision.fired if f.mode == mode]
        if refs:
            parts.append(f"{name}={','.join(refs)}")
    if decision.listed:
        parts.append(f"lists={','.join(sorted({hit.list for hit in decision.listed}))}")
    return ("decision", " ".join(parts).encode())


class Route(NamedTuple):
    """Where a decision sends a payment, and the parts of its routed record and printed line that do not vary."""

    topic: str
    suffix: bytes
    """What replaces the value's closing brace: ``, "DECISION": {...}}`` (payment.with_field's)."""
    header: tuple[str, bytes]
    line: str
    """The printed line up to the payment type: ``fraud_payments True ``."""


ROUTES_KEPT = 4096
"""Routes of distinct decisions kept (then the detector starts over)."""


class Detector:
    """Decides and routes each payment record; unreadable records go to the dead-letter topic.

    The rules' state is kept per input partition in a PartitionStates (local
    stores backed by a changelog topic, fraud_pipeline.state): restored when
    a partition is gained, its changes committed with the routed records.
    Only on the first start of a group whose changelog did not exist yet
    (``replay``) is a partition's state rebuilt from the input instead.
    """

    def __init__(
        self, output: Output, settings: Settings, dead_letters: DeadLetters, lines: LineBuffer, rules: LiveRules,
        states: PartitionStates, replay: Replay | None = None, metrics: Metrics | None = None, *, rekeyed: bool = False,
        lists: LiveLists | None = None,
    ) -> None:
        self._output = output
        self._fraud_topic = settings.topics.fraud
        self._legit_topic = settings.topics.legit
        self._dead_letters = dead_letters
        self._lines = lines
        self._rules = rules
        self._lists = lists
        self._book = lists.book if lists is not None else LISTS
        self._states = states
        self._replay = replay
        self._unreplayed: set[int] = set()
        self._rekeyed = rekeyed
        """Reading the decision's repartition topic (features.py): key, time and upstream reasons come in headers."""
        self._routes: dict[bytes, Route] = {}
        """Per decision's JSON (a bytes object keeps its hash): its route."""
        self._ruleset = rules.current
        self._engine = Engine(rules_of(rules.current, None) if rekeyed else rules.current)
        self._metrics = metrics if metrics is not None and metrics.enabled else None
        if self._metrics is not None:
            self._metrics.window_keys = states.tables
            self._metrics.rules = _rule_refs(self._ruleset)

    def begin_batch(self, batch: Batch) -> None:
        if self._lists is not None:
            self._lists.refresh()
        if self._rules.refresh():
            self._ruleset = self._rules.current
            self._use(Engine(rules_of(self._ruleset, None) if self._rekeyed else self._ruleset))
        if self._unreplayed:
            for tp, records in batch.items():
                if records and tp.partition in self._unreplayed:
                    self._unreplayed.discard(tp.partition)
                    if not self._states.has_state(tp.partition):  # else it came from the changelog after all
                        self._rebuild(records[0])

    def _use(self, engine: Engine) -> None:
        self._engine = engine
        if self._metrics is not None:
            self._metrics.rules = _rule_refs(self._ruleset)

    def partitions_assigned(self, partitions: set[int]) -> None:
        new = self._states.assigned(partitions)
        self._unreplayed &= partitions
        if self._replay is not None:
            self._unreplayed |= new

    # The state's side of the loop (stage.StateOwner).

    def waiting(self) -> set[int]:
        return self._states.waiting()

    def restore(self, consumer: Consumer, budget_s: float) -> None:
        self._states.restore(consumer, budget_s)

    def prepare_commit(self, offsets: dict[int, int]) -> None:
        self._states.send_changes(self._send_change, offsets)

    def _send_change(self, topic: str, key: bytes | None, value: bytes | None, partition: int) -> None:
        self._output.send(topic, key, value, None, partition)

    def seal(self) -> None:
        self._states.seal()
        self._lines.seal()
        if self._metrics is not None:
            self._metrics.sealed()

    def emit(self) -> None:
        self._states.committed()
        self._lines.emit()
        if self._metrics is not None:
            self._metrics.acknowledged()

    def discard(self) -> None:
        self._states.discard()
        self._lines.discard()
        if self._metrics is not None:
            self._metrics.rolled_back()

    def handle(self, record: Record) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines)
        if payment is None:
            return
        key, timestamp = record.key, record.timestamp
        if self._rekeyed:
            _, key, timestamp, fired, notes = carried(record)
        at = event_time(payment, timestamp, int(time.time() * 1000))
        # A stateless engine is given the table too: it notes there that the history is no longer recorded.
        table = self._states.tables.get(record.partition)
        decision = self._engine.decide(payment, at, table)
        if self._rekeyed:
            decision = with_carried(decision, self._ruleset, fired, notes)
        if self._book.leveled:
            hits = self._book.hits(payment)
            if hits:
                decision = decision.with_lists(hits)
        route = self._routes.get(decision.to_json())
        if route is None:
            route = self._route(decision)
        topic = route.topic
        # payment.with_field(value, "DECISION", decision.to_json()), its constant part made once per decision
        value = (record.value or b"").rstrip()[:-1] + route.suffix
        self._output.send(topic, key, value, [route.header], self._output.partition_for(topic, record.partition))
        if self._metrics is not None:
            self._metrics.decided(timestamp, route.header, decision.fired)
        self._lines.add(topic, route.line + payment.payment_type)

    def _route(self, decision: Decision) -> Route:
        outcome = decision.outcome
        topic = self._legit_topic if outcome == APPROVE else self._fraud_topic
        decision_json = decision.to_json()
        route = Route(topic, with_field(b"}", "DECISION", decision_json), decision_header(decision),
                      f"{topic} {'Review' if outcome == REVIEWED else outcome == DECLINE} ")
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[decision_json] = route
        return route

    def _rebuild(self, first: Record) -> None:
        """The fallback when no changelog existed: a partition's state from its payments of the longest window before ``first``."""
        assert self._replay is not None
        if not self._engine.stateful or first.offset == 0:
            return
        started = time.monotonic()
        table = self._states.tables[first.partition]
        reference = first.timestamp if first.timestamp > 0 else int(time.time() * 1000)
        since_ms = reference - self._engine.ruleset.retention_ms - ALLOWED_LATENESS_MS - MAX_CLOCK_SKEW_MS
        count = 0
        now_ms = int(time.time() * 1000)
        for record in self._replay(first.partition, since_ms, first.offset):
            try:
                payment = decode(record.value)
            except InvalidPayment:
                continue  # dead-lettered when it was first read
            self._engine.remember(payment, event_time(payment, record.timestamp, now_ms), table)
            count += 1
        if count:
            log.warning("no changelog existed: rebuilt the state of partition %d from %d payment(s) of the input "
                        "before offset %d in %.2fs", first.partition, count, first.offset, time.monotonic() - started)


def _rule_refs(ruleset: RuleSet) -> list[tuple[str, int, str]]:
    """Every rule in force, the ones evaluated in the re-keying stages too."""
    return [(rule.id, rule.version, rule.mode) for rule in ruleset.rules]


@contextmanager
def live_rules(settings: Settings, check: Callable[[RuleSet], None] = lambda ruleset: None,
               ) -> Iterator[tuple[LiveRules, LiveLists]]:
    """The detector's rules and lists, caught up with their topics; ``check`` refuses sets this detector cannot run."""
    rules_file = require(settings.detector, "detector").rules_file
    if rules_file is None:
        baseline = ORIGINAL
    else:
        try:
            baseline = load_ruleset(rules_file)
            check(baseline)
        except RuleError as exc:
            raise PipelineError(f"rules file refused: {exc}") from None
    rejects = Output(make_producer(settings, f"{NAME}-rules"))
    rejected = DeadLetters(rejects, settings.topics.rules_rejected, NAME)

    def reject(record: Record, reason: str) -> None:
        rejected.send(record, reason)
        try:
            rejects.flush(timeout_s=10)
        except BatchError as exc:
            log.error("could not write the rejected record to %s: %s", settings.topics.rules_rejected, exc)

    with ExitStack() as stack:
        stack.callback(rejects.producer.close)
        reader = make_topic_reader(settings, settings.topics.rules, f"{NAME}-rules")
        stack.callback(reader.close)
        rules = LiveRules(baseline, reader, reject)
        rules.check = check
        rules.catch_up()
        log.info("rules (%s, then topic %s): %s", rules_file or "original", settings.topics.rules, describe(rules.current))
        lists_reader = make_topic_reader(settings, settings.topics.lists, f"{NAME}-lists")
        stack.callback(lists_reader.close)
        lists = LiveLists(lists_reader, reject)
        lists.book.reset()
        lists.catch_up()
        if lists.book.specs:
            log.info("lists (topic %s): %s", settings.topics.lists, ", ".join(
                f"{spec.name} ({spec.level}, {spec.field}, {len(lists.book.live_entries(spec.name))} live)"
                for spec in lists.book.specs.values()))
        yield rules, lists


def _replay(settings: Settings) -> Replay:
    def replay(partition: int, since_ms: int, until_offset: int) -> Iterator[Record]:
        return read_span(
            settings, settings.topics.payments, partitions=[partition], since_ms=since_ms,
            until_offsets={partition: until_offset}, client_id=f"{NAME}-replay",
        )
    return replay


@contextmanager
def partition_states(settings: Settings, changelog: str) -> Iterator[PartitionStates]:
    """The detector's state stores (under --state-dir), restored from ``changelog``; closed on the way out."""
    group_id = require(settings.consumer, "consumer").group_id or DEFAULT_GROUP
    state_dir = require(settings.detector, "detector").state_dir
    reader = make_groupless_consumer(settings, f"{NAME}-restore")
    exactly_once = settings.delivery is not None and settings.delivery.guarantee == EXACTLY_ONCE
    states = PartitionStates(state_dir, group_id, settings.topics.payments, changelog, reader, encode_entity, decode_entity,
                             exactly_once=exactly_once)
    try:
        yield states
    finally:
        states.close()


def run(settings: Settings, stop: threading.Event, watch: Callable[[Detector], RecordHandler] | None = None) -> int:
    """The detector until stopped or idle; ``watch`` wraps the deciding stage's handler (the bench counts what it routes)."""
    topics = settings.topics
    prepare_topics(settings, reads=[topics.payments, topics.rules, topics.lists],
                   writes=[topics.fraud, topics.legit, topics.dead_letter, topics.rules_rejected])
    group_id = require(settings.consumer, "consumer").group_id or DEFAULT_GROUP
    metrics = start_metrics(NAME, settings.metrics)
    metrics.outcome_names = {topics.fraud: "fraud", topics.legit: "legit"}
    with live_rules(settings) as (rules, lists):
        groups = rekeyed_groups(rules.current)
        hops = plan(settings, groups)
        source = decision_topic(settings) if hops else topics.payments
        decider = stage_settings(settings, source, f"{group_id}-by-ACCOUNT", "decide") if hops else settings
        decider_group = require(decider.consumer, "consumer").group_id or DEFAULT_GROUP
        if hops:
            prepare_internal_topics(settings, [hop.target for hop in hops])
            log.info("rules grouped by %s: re-keyed through %s", ", ".join(group_label(g) for g in groups),
                     " -> ".join([topics.payments, *(hop.target for hop in hops)]))
        changelog = changelog_topic(decider_group, source)
        created = prepare_changelog(decider, source, changelog)
        limits = retention_limits(decider, source, changelog)
        refuse = refuse_new_groups(groups)

        def check(ruleset: RuleSet) -> None:
            limits.check(ruleset)
            refuse(ruleset)

        try:
            check(rules.current)
        except RuleError as exc:
            raise PipelineError(f"rules refused: {exc}") from None
        rules.check = check
        with ExitStack() as stack:
            status = [0] * (len(hops) + 1)
            chain = Chain(stop, len(hops) + 1, require(settings.consumer, "consumer").idle_timeout_s)
            stages: list[tuple[threading.Thread, Summary]] = []
            for n, hop in enumerate(hops):
                stages.append(_start_hop(stack, settings, hop, rules, chain, n, stop, status, stages[-1] if stages else None))
            threads = [thread for thread, _ in stages]
            states = stack.enter_context(partition_states(decider, changelog))
            if created and not hops:
                short = limits.replay_short(rules.current)
                log.warning("changelog %s did not exist: partitions whose input was read before are rebuilt from the "
                            "input this once (their state is then in the changelog)%s", changelog, f"; {short}" if short else "")
            replay = _replay(settings) if created and not hops else None
            summary = Summary(NAME, "payments")
            if hops:
                decider = _idle(decider, None)
                last = stages[-1][1]
                chain.follow(len(hops), threads[-1], lambda: summary.total, lambda: last.counts["forwarded"])
            status[-1] = run_stage(
                decider, name=NAME, source_topic=source, stop=chain.stops[-1], summary=summary,
                make_handler=lambda output, dead_letters, lines: (watch or _same)(Detector(
                    output, decider, dead_letters, lines, rules, states, replay, metrics, rekeyed=bool(hops), lists=lists)),
                metrics=metrics,
            )
            if status[-1]:
                stop.set()
            for thread in threads:
                thread.join()
        return max(status)


def _idle(settings: Settings, idle_timeout_s: float | None) -> Settings:
    return replace(settings, consumer=replace(require(settings.consumer, "consumer"), idle_timeout_s=idle_timeout_s))


def _same(detector: Detector) -> RecordHandler:
    return detector


def _start_hop(stack: ExitStack, settings: Settings, hop: Hop, rules: LiveRules, chain: Chain, index: int,
               stop: threading.Event, status: list[int], upstream: tuple[threading.Thread, Summary] | None,
               ) -> tuple[threading.Thread, Summary]:
    """One stage before the decision (features.py), in a thread of its own; its stores close with ``stack``.

    ``upstream``: the stage before it, whose end (and what it forwarded) this one's idle end waits for.
    """
    label = "re-key" if hop.fields is None else group_label(hop.fields)
    hop_settings = _idle(stage_settings(settings, hop.source, hop.group_id, "rekey" if hop.fields is None else f"by-{label}"),
                         chain.idle_timeout_s(index))
    states = None
    if hop.fields is not None:
        changelog = changelog_topic(hop.group_id, hop.source)
        prepare_changelog(hop_settings, hop.source, changelog)
        states = stack.enter_context(partition_states(hop_settings, changelog))
    partitions = settings.topics.payments_partitions
    summary = Summary(f"{NAME}[{label}]", "payments")

    def run_hop() -> int:
        return run_stage(
            hop_settings, name=f"{NAME}[{label}]", source_topic=hop.source, stop=chain.stops[index], summary=summary,
            make_handler=lambda output, dead_letters, lines: FeatureStage(
                hop, output, dead_letters, lines, lambda: rules.current, states, partitions),
        )

    thread = threading.Thread(target=stop_all_on_failure, args=(stop, status, index, run_hop), name=f"stage-{label}", daemon=True)
    if upstream is not None:
        before, sent = upstream
        chain.follow(index, before, lambda: summary.total, lambda: sent.counts["forwarded"])
    thread.start()
    return thread, summary


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
