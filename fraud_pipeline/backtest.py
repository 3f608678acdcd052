"""Backtest a rule set on labelled payments: precision and recall per rule, per scenario, overall.

    python -m fraud_pipeline.backtest [--recommended | --rules FILE]
        [--input FILE.jsonl | --topic NAME [--since T] [--until T]
         | --rate R[,R...] [--duration S | --count N] [--accounts N] --seed S --mix MIX]
        [--labels-topic NAME] [--alert-budget K] [--save FILE.jsonl] [--json FILE]

Payments come from one of:

- a JSON lines file, one ``{"label": "fraud"|"legit", "scenario": "...", "payment": {...}}`` a line;
- a topic: its committed records in a time span, labelled by their ``fraud.label`` header;
- by default, ``scenarios.labelled_stream`` from a fixed start instant (reproducible).

Generated payments and the pace. ``--rate 20,200`` backtests at each rate in
turn and ends with a table of each scenario's precision and recall at each
rate. A faster stream comes from more accounts, not from each account paying
more often: unless ``--accounts`` is given, there are ACCOUNTS_PER_RATE (500)
accounts per payment a second (10,000 at 20/s, 100,000 at 200/s), so each
account pays about every 500 s at any rate, as the velocity rules expect;
and unless ``--count`` is given, each rate runs DURATION_S (2,500) simulated
seconds (50,000 payments at 20/s, 500,000 at 200/s). When the mix has
scenarios of regulars, the regulars' 28 days of history
(``scenarios.history``) come first, the same at every rate, and are decided
and reported like any payment (scenario ``history``).

Each payment is decided as the detector decides it (fraud_pipeline.rules.order,
``reference``): the account's rules in each partition's offset order, one
table per partition; the rules over other keys (``DEVICE``, ``TO``...) on
``--partitions`` key partitions, each taking its payments in (sequence time,
partition, offset) order, one table per key partition. So the backtest's
decisions are the live detector's over the same records (the tests hold the
two together). Records that cannot be read or have no label are counted and
reported, never silently dropped. Lists are live settings of the detector:
the backtest decides by the rules alone.

Labels: the source's own (the generator's, the file's, the topic's headers),
or with ``--labels-topic`` the analysts' verdicts from the labels topic
(fraud_pipeline.cases), the latest per payment id; a payment without one
there is counted as unlabelled and left out.

Precision of a rule is the share of its alerts that are labelled fraud;
its recall the share of all fraud-labelled payments it fires on. Overall,
a payment is an alert when the rule set decides it fraud (shadow rules
never count). A scenario's precision is the share of the alerts on its
payments that are labelled fraud, its recall the share of its fraud-labelled
payments alerted on (``-`` for a scenario with no fraud: its false alerts
say how it did). A ratio with nothing to divide by is reported as 0.

Precision@k (``--alert-budget``, 100 by default) is the share of fraud among
the k payments the rules scored highest (ties: the earliest first): what an
alert budget of k a day would catch.

The last line of the output is ``overall precision=P recall=R f1=F alerts=N``
(with several rates: over all of them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, TextIO

import pytz

from .cases import Label, RecordError, precision_at_k
from .clients import ClientError
from .config import Settings, add_connection_arguments, connection_settings, positive_float, positive_int
from .errors import ConfigError, PipelineError
from .payment import InvalidPayment, Payment, decode, event_time
from .rules import ORIGINAL, RULESETS_DIR, Decision, RuleError, RuleSet, load_ruleset
from .rules.order import reference
from .runtime import Progress, config_error
from .scenarios import (
    FRAUD,
    LABEL_HEADER,
    LABELS,
    SCENARIO_HEADER,
    Labelled,
    World,
    history,
    labelled_stream,
    parse_mix,
    simulated_clock,
)

START = datetime.datetime(2024, 1, 1, tzinfo=pytz.utc)
"""Generated data sets start at this instant, so a seed gives the same data set on every run."""
RECOMMENDED = RULESETS_DIR / "recommended.yaml"
UNKNOWN_SCENARIO = "unknown"
DEFAULT_RATES = (20.0,)
ACCOUNTS_PER_RATE = 500
"""Generated accounts per payment a second, unless --accounts: each account pays about every 500 s at any rate."""
DURATION_S = 2500.0
"""Simulated seconds generated at each rate, unless --count."""
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled payment to decide, with its event time and the partition it came from."""

    payment: Payment
    label: str
    scenario: str
    event_ms: int
    partition: int = 0


@dataclass
class Skipped:
    """Records left out of the backtest: counts per kind, and the first reasons."""

    counts: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str, reason: str) -> None:
        self.counts[kind] += 1
        if len(self.reasons) < MAX_PROBLEMS_SHOWN:
            self.reasons.append(f"{where}: {kind}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------
# Sources


def past(seed: int | None, mix_text: str, accounts: int) -> list[Labelled]:
    """The regulars' history before START that a generated data set starts with (none unless the mix needs it)."""
    return history(seed, World(seed, accounts), START) if parse_mix(mix_text).needs_history else []


def generated(
    count: int, seed: int | None, mix_text: str, rate: float, accounts: int, before: list[Labelled] | None = None
) -> Iterator[Example]:
    """The regulars' history (``before``, else ``past``'s), then ``count`` payments ``rate`` a second from START."""
    if before is None:
        before = past(seed, mix_text, accounts)
    stream = labelled_stream(seed, accounts, parse_mix(mix_text), simulated_clock(START, rate), history_days=0)
    for item in chain(before, islice(stream, count)):
        assert item.payment.timestamp_ms is not None
        yield Example(item.payment, item.label, item.scenario, item.payment.timestamp_ms)


def _label(raw: Any) -> str | None:
    """``fraud`` or ``legit``, else None."""
    return raw if isinstance(raw, str) and raw in LABELS else None


def from_lines(lines: Iterable[str], skipped: Skipped, name: str = "input") -> Iterator[Example]:
    """Examples from JSON lines (``{"label", "scenario", "payment"}``); blank lines are ignored."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            skipped.add("unreadable", where, f"not JSON: {exc}")
            continue
        if not isinstance(data, dict):
            skipped.add("unreadable", where, f"not a JSON object: {type(data).__name__}")
            continue
        try:
            payment = decode(json.dumps(data.get("payment")).encode())
        except InvalidPayment as exc:
            skipped.add("unreadable", where, str(exc))
            continue
        label = _label(data.get("label"))
        if label is None:
            skipped.add("unlabelled", where, f"label must be fraud or legit, got {data.get('label')!r}")
            continue
        scenario = data.get("scenario")
        scenario = scenario if isinstance(scenario, str) and scenario else UNKNOWN_SCENARIO
        if payment.timestamp_ms is None:
            skipped.add("unreadable", where, "no TIMESTAMP_MS: no event time")
            continue
        yield Example(payment, label, scenario, payment.timestamp_ms)


def from_file(path: Path, skipped: Skipped) -> Iterator[Example]:
    """Examples from a JSON lines file."""
    with path.open(encoding="utf-8") as lines:
        yield from from_lines(lines, skipped, str(path))


def _header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", errors="replace")
    return None


def from_topic(
    settings: Settings, topic: str, since_ms: int | None, until_ms: int | None, skipped: Skipped, *,
    labelled_only: bool = True,
) -> Iterator[Example]:
    """Examples from a topic's committed records in a span, labelled by their headers (``labelled_only=False``: those
    without a label too, labelled ``""``)."""
    from .kafka_io import read_span, record_source  # the file and generated sources need no Kafka

    for record in read_span(settings, topic, since_ms=since_ms, until_ms=until_ms):
        where = record_source(record)
        try:
            payment = decode(record.value)
        except InvalidPayment as exc:
            skipped.add("unreadable", where, str(exc))
            continue
        raw_label = _header(record.headers, LABEL_HEADER)
        label = _label(raw_label)
        if label is None and not labelled_only:
            label = ""
        if label is None:
            reason = f"no {LABEL_HEADER} header" if raw_label is None else f"{LABEL_HEADER} must be fraud or legit, got {raw_label!r}"
            skipped.add("unlabelled", where, reason)
            continue
        scenario = _header(record.headers, SCENARIO_HEADER) or UNKNOWN_SCENARIO
        event_ms = event_time(payment, record.timestamp)  # as the detector bounds it
        yield Example(payment, label, scenario, event_ms, record.partition)


def read_labels(settings: Settings, topic: str, skipped: Skipped) -> dict[str, str]:
    """payment id -> verdict from the labels topic: the latest label of each payment; unreadable ones counted."""
    from .kafka_io import read_latest, record_source

    labels = read_latest(settings, topic, lambda record: Label.from_record(record.key, record.value or b""),
                         lambda record, exc: skipped.add("unreadable label", record_source(record), str(exc)),
                         (RecordError,), client_id="fraud-backtest-labels")
    return {payment_id: label.verdict for payment_id, label in labels.items()}


def relabelled(examples: Iterable[Example], verdicts: dict[str, str], skipped: Skipped) -> Iterator[Example]:
    """The examples labelled by ``verdicts`` (the labels topic's) instead of their own; those without one skipped."""
    for example in examples:
        verdict = verdicts.get(example.payment.payment_id or "")
        if verdict is None:
            skipped.add("unlabelled", f"payment {example.payment.payment_id}", "no label in the labels topic")
            continue
        yield Example(example.payment, verdict, example.scenario, example.event_ms, example.partition)


def jsonl_line(label: str, scenario: str, payment: Payment) -> str:
    """One line of a data set file, as ``--input`` reads it (with its newline)."""
    return json.dumps({"label": label, "scenario": scenario, "payment": payment.to_dict()}) + "\n"


def saving(examples: Iterable[Example], out: TextIO) -> Iterator[Example]:
    """Pass examples through, writing each as a line that ``--input`` reads back."""
    for example in examples:
        out.write(jsonl_line(example.label, example.scenario, example.payment))
        yield example


# ---------------------------------------------------------------------------
# Scoring


def ratio(part: int, whole: int) -> float:
    """``part / whole``, 0 when ``whole`` is 0."""
    return part / whole if whole else 0.0


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall, 0 when both are 0."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@dataclass
class Tally:
    """Alerts and how many of them were right, against the fraud-labelled payments."""

    payments: int = 0
    fraud: int = 0
    alerts: int = 0
    true_alerts: int = 0

    @property
    def false_alerts(self) -> int:
        return self.alerts - self.true_alerts

    @property
    def missed(self) -> int:
        return self.fraud - self.true_alerts

    @property
    def precision(self) -> float:
        return ratio(self.true_alerts, self.alerts)

    @property
    def recall(self) -> float:
        return ratio(self.true_alerts, self.fraud)

    @property
    def f1(self) -> float:
        return f1_score(self.precision, self.recall)

    @property
    def alert_rate(self) -> float:
        return ratio(self.alerts, self.payments)

    def count(self, fraud: bool, alert: bool) -> None:
        self.payments += 1
        self.fraud += fraud
        self.alerts += alert
        self.true_alerts += fraud and alert


@dataclass
class Report:
    """What a backtest found: overall, per rule and per scenario."""

    ruleset: RuleSet
    overall: Tally = field(default_factory=Tally)
    scenarios: dict[str, Tally] = field(default_factory=dict)
    skipped: Skipped = field(default_factory=Skipped)
    rule_alerts: Counter[str] = field(default_factory=Counter)
    """Per rule id, the payments it fired on (shadow rules included)."""
    rule_true_alerts: Counter[str] = field(default_factory=Counter)
    """Per rule id, the fraud-labelled payments it fired on."""
    scored: list[tuple[float, bool]] = field(default_factory=list)
    """(score, labelled fraud) of every payment some enabled rule scored, in order (for Precision@k)."""

    def record(self, example: Example, decision: Decision) -> None:
        fraud = example.label == FRAUD
        if decision.score > 0:
            self.scored.append((decision.score, fraud))
        self.overall.count(fraud, decision.fraud)
        scenario = self.scenarios.get(example.scenario)
        if scenario is None:
            scenario = self.scenarios[example.scenario] = Tally()
        scenario.count(fraud, decision.fraud)
        for fired in decision.fired:
            self.rule_alerts[fired.id] += 1
            if fraud:
                self.rule_true_alerts[fired.id] += 1

    def rule(self, rule_id: str) -> Tally:
        """One rule's figures; its recall is over all fraud-labelled payments."""
        return Tally(self.overall.payments, self.overall.fraud, self.rule_alerts[rule_id], self.rule_true_alerts[rule_id])


KEY_PARTITIONS = 6
"""The key partitions rules over other keys are decided on, by default: the payments topic's default count."""


def decided(examples: Iterable[Example], ruleset: RuleSet, partitions: int = KEY_PARTITIONS) -> list[tuple[Example, Decision]]:
    """Each example with its decision, as the detector decides it (rules.order.reference); offsets per partition in order."""
    kept = list(examples)
    offsets: Counter[int] = Counter()
    items = []
    for example in kept:
        items.append((example.partition, offsets[example.partition], example.payment, example.event_ms))
        offsets[example.partition] += 1
    decisions = reference(items, ruleset, partitions)
    return [(example, decisions[(item[0], item[1])]) for example, item in zip(kept, items, strict=True)]


def backtest(
    examples: Iterable[Example], ruleset: RuleSet, skipped: Skipped | None = None,
    progress: Callable[[int], None] | None = None, partitions: int = KEY_PARTITIONS,
) -> Report:
    """Decide the examples as the detector does (``decided``) and report on them."""
    report = Report(ruleset, skipped=skipped if skipped is not None else Skipped())
    for n, (example, decision) in enumerate(decided(examples, ruleset, partitions), 1):
        report.record(example, decision)
        if progress is not None and n % 1000 == 0:
            progress(n)
    if progress is not None:
        progress(report.overall.payments)
    return report


# ---------------------------------------------------------------------------
# Output


def _f(value: float) -> str:
    return f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rules_table(report: Report) -> str:
    """Per rule: alerts it raised (would raise, in shadow), true ones, precision, recall, F1."""
    rows = []
    for rule in report.ruleset.rules:
        tally = report.rule(rule.id)
        rows.append([rule.ref, rule.mode, str(tally.alerts), str(tally.true_alerts), _f(tally.precision), _f(tally.recall), _f(tally.f1)])
    return _table(["rule", "mode", "alerts", "TP", "precision", "recall", "F1"], rows)


def _scenario_order(report: Report) -> list[tuple[str, Tally]]:
    """Fraud scenarios first (most fraud first), then the others, by name."""
    return sorted(report.scenarios.items(), key=lambda item: (-item[1].fraud, item[0]))


def scenarios_table(report: Report) -> str:
    """Per scenario: payments, fraud-labelled ones, alerts, caught fraud, precision, recall, false alerts."""
    rows = []
    for name, tally in _scenario_order(report):
        precision, recall = (_f(tally.precision), _f(tally.recall)) if tally.fraud else ("-", "-")
        counts = [tally.payments, tally.fraud, tally.alerts, tally.true_alerts]
        rows.append([name, *map(str, counts), precision, recall, str(tally.false_alerts)])
    return _table(["scenario", "payments", "fraud", "alerts", "caught", "precision", "recall", "false alerts"], rows)


def rates_table(runs: list[tuple[float, Report]]) -> str:
    """Per scenario, its precision and recall (false alerts, for legit ones) at each rate."""
    names = list(dict.fromkeys(name for _, report in runs for name, _ in _scenario_order(report)))
    header = ["scenario"]
    for rate, _ in runs:
        header += [f"P {rate:g}/s", f"R {rate:g}/s", f"FP {rate:g}/s"]
    rows = []
    for name in names:
        row = [name]
        for _, report in runs:
            tally = report.scenarios.get(name, Tally())
            shown = (_f(tally.precision), _f(tally.recall)) if tally.fraud else ("-", "-")
            row += [*shown, str(tally.false_alerts)]
        rows.append(row)
    overall = ["overall"]
    for _, report in runs:
        overall += [_f(report.overall.precision), _f(report.overall.recall), str(report.overall.false_alerts)]
    return _table(header, [*rows, overall])


def pooled(runs: list[tuple[float, Report]]) -> Report:
    """The runs' overall and per-scenario tallies added up (for the last line over several rates)."""
    total = Report(runs[0][1].ruleset)
    for _, report in runs:
        for name, tally in (("", report.overall), *report.scenarios.items()):
            into = total.overall if not name else total.scenarios.setdefault(name, Tally())
            into.payments += tally.payments
            into.fraud += tally.fraud
            into.alerts += tally.alerts
            into.true_alerts += tally.true_alerts
        total.rule_alerts.update(report.rule_alerts)
        total.rule_true_alerts.update(report.rule_true_alerts)
    return total


def overall_table(report: Report) -> str:
    """The rule set's decisions against the labels."""
    o = report.overall
    counts = report.skipped.counts
    row = [
        str(o.payments), str(o.fraud), str(o.alerts), f"{100 * o.alert_rate:.2f}%", str(o.true_alerts), str(o.false_alerts),
        str(o.missed), _f(o.precision), _f(o.recall), _f(o.f1), str(counts["unreadable"]), str(counts["unlabelled"]),
    ]
    header = ["payments", "fraud", "alerts", "alert rate", "TP", "FP", "FN", "precision", "recall", "F1", "unreadable", "unlabelled"]
    return _table(header, [row])


def precision_at_budget(report: Report, k: int) -> str:
    """``precision@100=0.870 (100 of 1234 scored)``."""
    value = precision_at_k(report.scored, k)
    shown = "-" if value is None else _f(value)
    return f"precision@{k}={shown} ({min(k, len(report.scored))} of {len(report.scored)} scored)"


def summary_line(report: Report) -> str:
    """``overall precision=0.973 recall=0.981 f1=0.977 alerts=1234``."""
    o = report.overall
    return f"overall precision={_f(o.precision)} recall={_f(o.recall)} f1={_f(o.f1)} alerts={o.alerts}"


def render(report: Report, title: str, alert_budget: int = 100) -> str:
    """The whole report; its last line is ``summary_line``."""
    return "\n\n".join([
        f"## Backtest: {title}",
        "### Rules\n\n" + rules_table(report),
        "### Scenarios\n\n" + scenarios_table(report),
        "### Overall\n\n" + overall_table(report),
        precision_at_budget(report, alert_budget),
        summary_line(report),
    ])


def to_json(report: Report, title: str, alert_budget: int = 100) -> dict[str, Any]:
    """The report as data, for ``--json``."""

    def tally(t: Tally) -> dict[str, Any]:
        return {
            "payments": t.payments, "fraud": t.fraud, "alerts": t.alerts, "true_alerts": t.true_alerts,
            "false_alerts": t.false_alerts, "precision": t.precision, "recall": t.recall, "f1": t.f1,
        }

    return {
        "title": title,
        "ruleset": report.ruleset.to_dict(),
        "overall": {**tally(report.overall), "alert_rate": report.overall.alert_rate, "missed": report.overall.missed},
        "rules": [{"rule": rule.ref, "mode": rule.mode, **tally(report.rule(rule.id))} for rule in report.ruleset.rules],
        "scenarios": {name: tally(t) for name, t in sorted(report.scenarios.items())},
        "precision_at_k": {"k": alert_budget, "precision": precision_at_k(report.scored, alert_budget),
                           "scored": len(report.scored)},
        "skipped": dict(report.skipped.counts),
        "skipped_examples": report.skipped.reasons,
    }


# ---------------------------------------------------------------------------
# Command line


def parse_time(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 instant (UTC when it has no offset), as epoch milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        at = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not epoch milliseconds nor an ISO-8601 time: {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    return int(at.timestamp() * 1000)


def _mix(text: str) -> str:
    try:
        parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_rates(text: str) -> tuple[float, ...]:
    """``20`` or ``20,200``: payments per simulated second, each > 0, none twice."""
    rates: list[float] = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate (payments per second): {part.strip()!r}") from None
        if not rate > 0 or rate == float("inf"):
            raise argparse.ArgumentTypeError(f"a rate must be a positive number, got {part.strip()!r}")
        if rate in rates:
            raise argparse.ArgumentTypeError(f"rate {part.strip()} given twice")
        rates.append(rate)
    return tuple(rates)


def build_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m fraud_pipeline.backtest",
        description="Precision and recall of a rule set on labelled payments (generated, from a file, or from a topic).",
    )
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--rules", type=Path, metavar="FILE", help="rule set file, JSON or YAML (default: the original tutorial's rule)")
    rules.add_argument("--recommended", action="store_true", help=f"the recommended rule set ({RECOMMENDED.name})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, metavar="FILE", help="labelled payments, JSON lines (as --save writes them)")
    source.add_argument("--topic", metavar="NAME", help=f"read a topic's committed records, labelled by their {LABEL_HEADER} header")
    kafka = add_connection_arguments(parser, env)
    kafka.title = "topic source (Kafka)"
    kafka.add_argument("--since", type=parse_time, metavar="T", help="first record time: epoch ms or ISO-8601 (default: the beginning)")
    kafka.add_argument("--until", type=parse_time, metavar="T", help="last record time: epoch ms or ISO-8601 (default: the current end)")
    gen = parser.add_argument_group("generated source (the default)")
    gen.add_argument("--count", type=positive_int, metavar="N",
                     help=f"payments at each rate (default: {DURATION_S:g} simulated seconds' worth, 50000 at 20/s)")
    gen.add_argument("--duration", type=positive_float, default=DURATION_S, metavar="S",
                     help="simulated seconds at each rate, when --count is not given (default: %(default)g)")
    gen.add_argument("--seed", type=int, default=42, metavar="S", help="random seed (default: %(default)s)")
    gen.add_argument("--mix", type=_mix, default="default", metavar="MIX",
                     help="scenario rates: default, none, or name=rate,... per base payment (default: %(default)s)")
    gen.add_argument("--rate", type=parse_rates, default=DEFAULT_RATES, metavar="R[,R...]",
                     help="simulated payments per second; several (20,200) backtest at each in turn (default: 20)")
    gen.add_argument("--accounts", type=positive_int, metavar="N",
                     help=f"sender accounts (default: {ACCOUNTS_PER_RATE} per payment a second, 10000 at 20/s)")
    labels = parser.add_argument_group("labels")
    labels.add_argument("--labels-topic", metavar="NAME",
                        help="label the payments with the analysts' verdicts from this labels topic (latest per payment id) "
                        "instead of their own; payments without one are left out (uses the Kafka connection options)")
    labels.add_argument("--alert-budget", type=positive_int, default=100, metavar="K",
                        help="Precision@K: the share of fraud among the K highest-scored payments (default: %(default)s)")
    source.add_argument("--partitions", type=positive_int, default=KEY_PARTITIONS, metavar="N",
                        help="the key partitions rules over other keys are decided on, as the detector's internal topics "
                             "(the payments topic's count; default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--save", type=Path, metavar="FILE", help="also write the labelled payments as JSON lines (readable with --input)")
    out.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    return parser


def _load_rules(args: argparse.Namespace) -> tuple[RuleSet, str]:
    if args.recommended:
        return load_ruleset(RECOMMENDED), RECOMMENDED.name
    if args.rules is not None:
        return load_ruleset(args.rules), str(args.rules)
    return ORIGINAL, "original (bitcoin)"


def _source(args: argparse.Namespace, rate: float, skipped: Skipped) -> tuple[Iterator[Example], int | None, str]:
    """The examples, how many are expected (None: unknown) and a description."""
    if args.input is not None:
        return from_file(args.input, skipped), None, f"file {args.input}"
    if args.topic is not None:
        settings = Settings(connection_settings(args))
        return from_topic(settings, args.topic, args.since, args.until, skipped), None, f"topic {args.topic}"
    count = args.count if args.count is not None else max(1, round(args.duration * rate))
    accounts = args.accounts if args.accounts is not None else max(1, round(ACCOUNTS_PER_RATE * rate))
    before = past(args.seed, args.mix, accounts)
    description = f"generated count={count} seed={args.seed} mix={args.mix} rate={rate:g}/s accounts={accounts}"
    if before:
        description += f" history={len(before)}"
    return generated(count, args.seed, args.mix, rate, accounts, before), count + len(before), description


def _run_one(args: argparse.Namespace, ruleset: RuleSet, rules_name: str, rate: float) -> tuple[Report, str]:
    skipped = Skipped()
    examples, total, description = _source(args, rate, skipped)
    if args.labels_topic is not None:
        verdicts = read_labels(Settings(connection_settings(args)), args.labels_topic, skipped)
        examples = relabelled(examples, verdicts, skipped)
        description += f", labelled by topic {args.labels_topic} ({len(verdicts)} labels)"
    progress = Progress("backtest", total)
    save = args.save.open("w", encoding="utf-8") if args.save is not None else None
    try:
        report = backtest(saving(examples, save) if save else examples, ruleset, skipped, progress, args.partitions)
    finally:
        if save:
            save.close()
    progress.close()
    for reason in skipped.reasons:
        print(f"backtest: skipped {reason}", file=sys.stderr)
    if skipped.total:
        print(f"backtest: skipped {skipped.total} records: {dict(skipped.counts)}", file=sys.stderr)
    return report, f"rules {rules_name} on {description}"


def run(args: argparse.Namespace) -> int:
    ruleset, rules_name = _load_rules(args)
    rates = args.rate if args.input is None and args.topic is None else args.rate[:1]
    if len(rates) == 1:
        report, title = _run_one(args, ruleset, rules_name, rates[0])
        if args.json is not None:
            args.json.write_text(json.dumps(to_json(report, title, args.alert_budget), indent=2) + "\n", encoding="utf-8")
        print(render(report, title, args.alert_budget))
        return 0
    runs: list[tuple[float, Report]] = []
    titles: list[str] = []
    for rate in rates:
        report, title = _run_one(args, ruleset, rules_name, rate)
        runs.append((rate, report))
        titles.append(title)
        print(render(report, title, args.alert_budget) + "\n")
    if args.json is not None:
        data = {"runs": [{"rate": rate, **to_json(report, title, args.alert_budget)}
                         for (rate, report), title in zip(runs, titles, strict=True)]}
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    rates_text = ", ".join(f"{rate:g}" for rate in rates)
    print(f"## Scenarios at {rates_text} payments/s\n\n" + rates_table(runs) + "\n")
    for rate, report in runs:
        print(f"rate {rate:g}/s: {summary_line(report)}")
    print(summary_line(pooled(runs)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the backtest; 2 for bad arguments, a bad rule set or an unreadable input, 1 for Kafka failures, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    if (args.since is not None or args.until is not None) and args.topic is None:
        print("backtest: error: --since and --until need --topic", file=sys.stderr)
        return 2
    if len(args.rate) > 1 and args.save is not None:
        print("backtest: error: --save takes one --rate", file=sys.stderr)
        return 2
    try:
        return run(args)
    except RuleError as exc:
        print(f"backtest: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"backtest: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # the connection settings of --topic: said as every script says them
        return config_error(exc)
    except (PipelineError, ClientError) as exc:
        print(f"backtest: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbacktest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
