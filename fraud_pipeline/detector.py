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
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from .clients import Batch, Record
from .config import EXACTLY_ONCE, Settings, build_parser, require
from .errors import PipelineError
from .kafka_io import make_groupless_consumer, make_producer, make_topic_reader, read_span
from .live_rules import LiveLists, LiveRules, describe
from .metrics import Metrics
from .metrics import start as start_metrics
from .payment import MAX_CLOCK_SKEW_MS, InvalidPayment, decode, event_time
from .rules import ALLOWED_LATENESS_MS, ORIGINAL, Engine, RuleError, RuleSet, load_ruleset
from .rules.definitions import group_label
from .rules.lists import LISTS
from .rules.order import refuse_new_groups
from .runtime import Summary, cli_main, run_cli, setup_logging
from .stage import BatchError, DeadLetters, LineBuffer, Output, RecordHandler, decode_or_reject, run_stage
from .state import PartitionStates, own_folder
from .topics import (
    RetentionLimits,
    delete_records,
    describe_topics,
    prepare_changelog,
    prepare_internal_topics,
    prepare_topics,
    retention_limits,
)
from .topology import (
    DEFAULT_GROUP,
    Anchor,
    Chain,
    Decider,
    KeyStage,
    Plan,
    Purger,
    Router,
    StagePlan,
    StateHandler,
    decision_header,
    decode_state,
    encode_state,
    plan,
    stage_settings,
)

NAME = "fraud_detector"
log = logging.getLogger(NAME)

Replay = Callable[[int, int, int], Iterator[Record]]
"""``replay(partition, since_ms, until_offset)``: the source partition's records in that span."""

__all__ = ["DEFAULT_GROUP", "NAME", "Detector", "decision_header", "main", "run"]


class Detector(StateHandler):
    """Decides and routes each payment record read from the payments; unreadable records go to the dead-letter topic.

    The single-stage detector, when no rule reads a key other than the
    account (else the decision path of fraud_pipeline.topology). The rules'
    state is kept per input partition in a PartitionStates (local stores
    backed by a changelog topic, fraud_pipeline.state): restored when a
    partition is gained, its changes committed with the routed records. Only
    on the first start of a group whose changelog did not exist yet
    (``replay``) is a partition's state rebuilt from the input instead.
    """

    def __init__(
        self, output: Output, settings: Settings, dead_letters: DeadLetters, lines: LineBuffer, rules: LiveRules,
        states: PartitionStates, replay: Replay | None = None, metrics: Metrics | None = None, *,
        lists: LiveLists | None = None,
    ) -> None:
        super().__init__(output, lines, states, metrics)
        self._dead_letters = dead_letters
        self._rules = rules
        self._lists = lists
        self._book = lists.book if lists is not None else LISTS
        self._replay = replay
        self._unreplayed: set[int] = set()
        self._ruleset = rules.current
        self._engine = Engine(rules.current)
        self._router = Router(output, settings.topics.fraud, settings.topics.legit, lines, metrics)
        self.decided = 0
        """Payments routed, dead letters included (the bench counts them)."""
        if self._metrics is not None:
            self._metrics.window_keys = states.tables
            self._metrics.rules = _rule_refs(self._ruleset)

    def begin_batch(self, batch: Batch) -> None:
        if self._lists is not None:
            self._lists.refresh()
        if self._rules.refresh():
            self._ruleset = self._rules.current
            self._use(Engine(self._ruleset))
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
        self._unreplayed &= partitions
        super().partitions_assigned(partitions)

    def gained(self, partitions: set[int]) -> None:
        if self._replay is not None:
            self._unreplayed |= partitions

    def handle(self, record: Record) -> None:
        self.decided += 1
        payment = decode_or_reject(record, self._dead_letters, self._lines)
        if payment is None:
            return
        at = event_time(payment, record.timestamp, int(time.time() * 1000))
        # A stateless engine is given the table too: it notes there that the history is no longer recorded.
        decision = self._engine.decide(payment, at, self._states.tables.get(record.partition))
        if self._book.leveled:
            hits = self._book.hits(payment)
            if hits:
                decision = decision.with_lists(hits)
        self._router.send(decision, record.key, record.value, record.partition, record.timestamp, payment.payment_type)

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
        topics = settings.topics
        lists_reader = make_topic_reader(settings, topics.list_definitions, f"{NAME}-lists", topics.lists)
        stack.callback(lists_reader.close)
        lists = LiveLists(lists_reader, reject, definitions=topics.list_definitions)
        lists.book.reset()
        lists.catch_up()
        if lists.book.specs:
            log.info("lists (topics %s, %s): %s", topics.list_definitions, topics.lists, ", ".join(
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
    """A stage's state stores (under --state-dir), restored from ``changelog``; closed on the way out."""
    group_id = require(settings.consumer, "consumer").group_id or DEFAULT_GROUP
    state_dir = require(settings.detector, "detector").state_dir
    reader = make_groupless_consumer(settings, f"{NAME}-restore")
    exactly_once = settings.delivery is not None and settings.delivery.guarantee == EXACTLY_ONCE
    states = PartitionStates(state_dir, group_id, settings.topics.payments, changelog, reader, encode_state, decode_state,
                             exactly_once=exactly_once)
    try:
        yield states
    finally:
        states.close()


def run(settings: Settings, stop: threading.Event, watch: Callable[[RecordHandler], RecordHandler] | None = None) -> int:
    """The detector until stopped or idle; ``watch`` wraps the deciding stage's handler (the bench counts what it routes).

    One stage, or the decision path's three (fraud_pipeline.topology.plan), wired here.
    """
    topics = settings.topics
    prepare_topics(settings, reads=[topics.payments, topics.rules, topics.lists, topics.list_definitions],
                   writes=[topics.fraud, topics.legit, topics.dead_letter, topics.rules_rejected])
    metrics = start_metrics(NAME, settings.metrics)
    metrics.outcome_names = {topics.fraud: "fraud", topics.legit: "legit"}
    with live_rules(settings) as (rules, lists):
        layout = plan(settings, rules.current)
        if layout.rekeyed:
            partitions = describe_topics(settings, [topics.payments])[topics.payments][0]
            prepare_internal_topics(settings, layout.internal_topics, partitions)
            log.info("rules grouped by %s: %s", ", ".join(group_label(g) for g in layout.groups), layout.describe())
        created = {stage.name: prepare_changelog(stage_settings(settings, stage, quiet=False), stage.source, stage.changelog)
                   for stage in layout.stages}
        check = RulesCheck(tuple(retention_limits(settings, stage.source, stage.changelog) for stage in layout.stages
                                 if stage.name != "decide" or not layout.rekeyed), layout.groups)
        try:
            check(rules.current)
        except RuleError as exc:
            raise PipelineError(f"rules refused: {exc}") from None
        rules.check = check
        if not layout.rekeyed:
            return _run_single(settings, layout.stages[0], stop, rules, lists, metrics, watch,
                               check.limits[0].replay_short(rules.current) if created["decide"] else None, created["decide"])
        group_id = require(settings.consumer, "consumer").group_id or DEFAULT_GROUP
        with own_folder(require(settings.detector, "detector").state_dir, group_id):
            return _run_path(settings, layout, partitions, stop, rules, lists, metrics, watch, check)


@dataclass(frozen=True)
class RulesCheck:
    """What a rule set must meet on a running detector (picklable: the stage processes check it too)."""

    limits: tuple[RetentionLimits, ...]
    """No window longer than a changelog keeps."""
    groups: tuple[tuple[str, ...], ...]
    """The keys the detector re-keys by: a rule over another key needs a restart."""

    def __call__(self, ruleset: RuleSet) -> None:
        for limit in self.limits:
            limit.check(ruleset)
        refuse_new_groups(self.groups)(ruleset)


def _run_single(settings: Settings, stage: StagePlan, stop: threading.Event, rules: LiveRules, lists: LiveLists,
                metrics: Metrics, watch: Callable[[RecordHandler], RecordHandler] | None, short: str | None,
                created: bool) -> int:
    with partition_states(settings, stage.changelog) as states:
        if created:
            log.warning("changelog %s did not exist: partitions whose input was read before are rebuilt from the "
                        "input this once (their state is then in the changelog)%s", stage.changelog, f"; {short}" if short else "")
        replay = _replay(settings) if created else None
        return run_stage(
            settings, name=NAME, source_topic=stage.source, stop=stop, summary=Summary(NAME, "payments"),
            make_handler=lambda output, dead_letters, lines: (watch or _same)(Detector(
                output, settings, dead_letters, lines, rules, states, replay, metrics, lists=lists)),
            metrics=metrics,
        )


COUNTERS = ("to_keys", "tickets", "keys_read", "answers", "late")
"""What the stage processes tell the detector's process (shared counters): records sent to the key stage (probes
and markers) and tickets sent to the decider by the anchor; records read, answers sent and late probes of the key
stage. The idle end of each stage after the first compares what it read with what was sent to it."""


def _run_path(settings: Settings, layout: Plan, partitions: int, stop: threading.Event, rules: LiveRules,
              lists: LiveLists, metrics: Metrics, watch: Callable[[RecordHandler], RecordHandler] | None,
              check: RulesCheck) -> int:
    """The anchor and the key stage each in a process of its own (one interpreter lock each), the decider in this one.

    All stop together: on a stop request, on a failure of any, or (with an idle timeout) one after the other once
    each has had everything upstream. A stage process whose detector process is gone (killed) exits at once.
    """
    decide_plan = layout.stages[2]
    idle_timeout_s = require(settings.consumer, "consumer").idle_timeout_s
    context = multiprocessing.get_context("spawn")  # not forked: the Kafka clients of this process run threads
    chain = Chain(stop, 3, idle_timeout_s, events=[context.Event(), context.Event(), threading.Event()])
    counters: dict[str, Any] = {name: context.Value("q", 0, lock=False) for name in COUNTERS}
    counters["keys"] = context.Array("q", partitions, lock=False)  # the anchor's window keys, per payments partition
    children = [context.Process(target=_stage_process, name=f"{NAME}[{stage.name}]", daemon=True,
                                args=(stage.name, settings, layout, partitions, chain.idle_timeout_s(index),
                                      chain.stops[index], counters, os.getpid(), check))
                for index, stage in enumerate(layout.stages[:2])]
    decide_settings = _stage_settings(settings, decide_plan, None)
    decider: list[Decider] = []
    with partition_states(decide_settings, decide_plan.changelog) as decide_states:
        if metrics.enabled:
            metrics.rules = _rule_refs(rules.current)
            metrics.late_probes_of = lambda: int(counters["late"].value)
            metrics.window_keys = _KeysOf(counters["keys"])

        def decide_handler(output: Output, dead_letters: DeadLetters, lines: LineBuffer) -> RecordHandler:
            def on_rules(ruleset: RuleSet) -> None:
                if metrics.enabled:
                    metrics.rules = _rule_refs(ruleset)

            router = Router(output, settings.topics.fraud, settings.topics.legit, lines, metrics)
            decider.append(Decider(output, dead_letters, lines, rules, lists, decide_states, router, on_rules, metrics,
                                   Purger(layout.answers, partial(delete_records, settings))))
            return (watch or _same)(decider[0])

        def run_child(child: multiprocessing.process.BaseProcess) -> int:
            child.start()
            child.join()
            return 0 if child.exitcode == 0 else 1

        threads = [threading.Thread(target=chain.run, args=(index, partial(run_child, child)), name=str(child.name),
                                    daemon=True) for index, child in enumerate(children)]
        for thread in threads:
            thread.start()
        chain.follow(1, threads[0], lambda: int(counters["keys_read"].value), lambda: int(counters["to_keys"].value))
        chain.follow(2, threads[1], lambda: decider[0].read if decider else 0,
                     lambda: int(counters["tickets"].value + counters["answers"].value))
        try:
            chain.run(2, lambda: run_stage(decide_settings, name=NAME, source_topic=decide_plan.source, stop=chain.stops[2],
                                           summary=Summary(NAME, "payments"), make_handler=decide_handler, metrics=metrics))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    return max(chain.status)


class _KeysOf(Mapping[int, Sized]):
    """The anchor's window keys per payments partition as its process publishes them (-1: not owned), for the metrics."""

    def __init__(self, counts: Any) -> None:
        self._counts = counts

    def __getitem__(self, partition: int) -> Sized:
        return range(max(int(self._counts[partition]), 0))

    def __iter__(self) -> Iterator[int]:
        return (p for p in range(len(self._counts)) if self._counts[p] >= 0)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _stage_settings(settings: Settings, stage: StagePlan, idle_timeout_s: float | None) -> Settings:
    each = stage_settings(settings, stage, quiet=stage.name != "decide")
    return replace(each, consumer=replace(require(each.consumer, "consumer"), idle_timeout_s=idle_timeout_s))


def _stage_process(name: str, settings: Settings, layout: Plan, partitions: int, idle_timeout_s: float | None,
                   stop: threading.Event, counters: dict[str, Any], parent: int, check: RulesCheck) -> None:
    """A stage of the decision path in a process of its own (the anchor or the key stage); exits with its status."""
    label = f"{NAME}[{name}]"
    setup_logging(label)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the detector's process relays it
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def orphaned() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:  # the detector was killed: so is this stage, as a thread of it would be
                os._exit(1)

    waiting = [threading.Thread(target=orphaned, name="orphaned", daemon=True)]
    waiting[0].start()
    stage = next(each for each in layout.stages if each.name == name)
    each = _stage_settings(settings, stage, idle_timeout_s)
    summary = Summary(label, "records")
    made: list[Anchor | KeyStage] = []

    def publish() -> None:
        counts = summary.counts
        if name == "anchor":
            counters["to_keys"].value = counts["probe"] + counts["marker"]
            counters["tickets"].value = counts["forwarded"]
            for partition in range(len(counters["keys"])):
                table = states.tables.get(partition) if states is not None else None
                try:
                    counters["keys"][partition] = len(table) if table is not None else -1
                except Exception:  # its store closed meanwhile (a rebalance): the next round tells
                    counters["keys"][partition] = -1
        elif made and isinstance(made[0], KeyStage):
            keys = made[0]
            counters["keys_read"].value, counters["answers"].value, counters["late"].value = keys.read, counts["answer"], keys.late

    def publishing() -> None:
        while not stop.wait(0.1):
            publish()

    status = 1
    states: PartitionStates | None = None
    try:
        with ExitStack() as stack:
            rules, _ = stack.enter_context(live_rules(settings, check))
            states = stack.enter_context(partition_states(each, stage.changelog))

            def current() -> RuleSet:
                rules.refresh()
                return rules.current

            def handler(output: Output, dead_letters: DeadLetters, lines: LineBuffer) -> RecordHandler:
                if name == "anchor":
                    markers = Output(make_producer(settings, f"{NAME}-markers"))
                    stack.callback(markers.producer.close)
                    made.append(Anchor(layout, output, dead_letters, lines, current, states, partitions, markers))
                else:
                    made.append(KeyStage(layout, output, dead_letters, lines, current, states, partitions,
                                         purger=Purger(layout.probes, partial(delete_records, settings))))
                return made[-1]

            waiting.append(threading.Thread(target=publishing, name="counters", daemon=True))
            waiting[-1].start()
            status = run_stage(each, name=label, source_topic=stage.source, stop=stop, summary=summary, make_handler=handler)
    except PipelineError as exc:
        logging.getLogger(label).error("%s", exc)
    except Exception:
        logging.getLogger(label).exception("stage failed")
    finally:
        publish()
        # Its threads leave their waits on the stop event before the process ends: one that ended inside
        # multiprocessing's Event.wait would leave the event's condition counting a sleeper that never wakes, and
        # the next set() (the detector stopping the others) would wait for it forever (seen after a stage failed).
        stop.set()
        for thread in waiting:
            thread.join(2.0)
    sys.exit(status)


def _same(handler: RecordHandler) -> RecordHandler:
    return handler


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
