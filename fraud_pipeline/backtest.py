"""Backtest a rule set on labelled payments: precision and recall per rule, per scenario, overall.

    python -m fraud_pipeline.backtest [--recommended | --rules FILE]
        [--input FILE.jsonl | --topic NAME [--since T] [--until T] | --count N --seed S --mix MIX --rate R]
        [--save FILE.jsonl] [--json FILE]

Payments come from one of:

- a JSON lines file, one ``{"label": "fraud"|"legit", "scenario": "...", "payment": {...}}`` a line;
- a topic: its committed records in a time span, labelled by their ``fraud.label`` header;
- by default, ``scenarios.labelled_stream`` from a fixed start instant (reproducible).

Each payment is decided in order by one Engine at its event time (its
TIMESTAMP_MS, else the record's time stamp), with one MemoryTable per
partition, as the detector would. Records that cannot be read or have no
label are counted and reported, never silently dropped.

Precision of a rule is the share of its alerts that are labelled fraud;
its recall the share of all fraud-labelled payments it fires on. Overall,
a payment is an alert when the rule set decides it fraud (shadow rules
never count). A ratio with nothing to divide by is reported as 0.

The last line of the output is ``overall precision=P recall=R f1=F alerts=N``.
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
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import pytz

from .clients import ClientError
from .config import Settings, add_connection_arguments, connection_settings, positive_float, positive_int
from .errors import ConfigError, PipelineError
from .payment import InvalidPayment, Payment, decode, event_time
from .rules import ORIGINAL, RULESETS_DIR, Decision, Engine, MemoryTable, RuleError, RuleSet, load_ruleset
from .runtime import Progress, config_error
from .scenarios import FRAUD, LABEL_HEADER, LABELS, SCENARIO_HEADER, labelled_stream, parse_mix, simulated_clock

START = datetime.datetime(2024, 1, 1, tzinfo=pytz.utc)
"""Generated data sets start at this instant, so a seed gives the same data set on every run."""
RECOMMENDED = RULESETS_DIR / "recommended.yaml"
UNKNOWN_SCENARIO = "unknown"
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


def generated(count: int, seed: int | None, mix_text: str, rate: float, accounts: int) -> Iterator[Example]:
    """``count`` labelled payments from ``scenarios.labelled_stream``, ``rate`` a second from START."""
    stream = labelled_stream(seed, accounts, parse_mix(mix_text), simulated_clock(START, rate))
    for item in islice(stream, count):
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
    settings: Settings, topic: str, since_ms: int | None, until_ms: int | None, skipped: Skipped
) -> Iterator[Example]:
    """Examples from a topic's committed records in a span, labelled by their headers."""
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
        if label is None:
            reason = f"no {LABEL_HEADER} header" if raw_label is None else f"{LABEL_HEADER} must be fraud or legit, got {raw_label!r}"
            skipped.add("unlabelled", where, reason)
            continue
        scenario = _header(record.headers, SCENARIO_HEADER) or UNKNOWN_SCENARIO
        event_ms = event_time(payment, record.timestamp)  # as the detector bounds it
        yield Example(payment, label, scenario, event_ms, record.partition)


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

    def record(self, example: Example, decision: Decision) -> None:
        fraud = example.label == FRAUD
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


def backtest(
    examples: Iterable[Example], ruleset: RuleSet, skipped: Skipped | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Decide each example in order with one engine and one state table per partition."""
    engine = Engine(ruleset)
    report = Report(ruleset, skipped=skipped if skipped is not None else Skipped())
    states: dict[int, MemoryTable] = {}
    decide = engine.decide
    for n, example in enumerate(examples, 1):
        state = states.get(example.partition)
        if state is None:
            state = states[example.partition] = MemoryTable()
        report.record(example, decide(example.payment, example.event_ms, state))
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


def scenarios_table(report: Report) -> str:
    """Per scenario: payments, fraud-labelled ones, alerts, caught fraud, recall, false alerts."""
    rows = []
    for name, tally in sorted(report.scenarios.items(), key=lambda item: (-item[1].fraud, item[0])):
        recall = _f(tally.recall) if tally.fraud else "-"
        counts = [tally.payments, tally.fraud, tally.alerts, tally.true_alerts]
        rows.append([name, *map(str, counts), recall, str(tally.false_alerts)])
    return _table(["scenario", "payments", "fraud", "alerts", "caught", "recall", "false alerts"], rows)


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


def summary_line(report: Report) -> str:
    """``overall precision=0.973 recall=0.981 f1=0.977 alerts=1234``."""
    o = report.overall
    return f"overall precision={_f(o.precision)} recall={_f(o.recall)} f1={_f(o.f1)} alerts={o.alerts}"


def render(report: Report, title: str) -> str:
    """The whole report; its last line is ``summary_line``."""
    return "\n\n".join([
        f"## Backtest: {title}",
        "### Rules\n\n" + rules_table(report),
        "### Scenarios\n\n" + scenarios_table(report),
        "### Overall\n\n" + overall_table(report),
        summary_line(report),
    ])


def to_json(report: Report, title: str) -> dict[str, Any]:
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
    gen.add_argument("--count", type=positive_int, default=50000, metavar="N", help="payments (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=42, metavar="S", help="random seed (default: %(default)s)")
    gen.add_argument("--mix", type=_mix, default="default", metavar="MIX",
                     help="scenario rates: default, none, or name=rate,... per base payment (default: %(default)s)")
    gen.add_argument("--rate", type=positive_float, default=20.0, metavar="R",
                     help="simulated payments per second (default: %(default)s)")
    gen.add_argument("--accounts", type=positive_int, default=10000, metavar="N", help="sender accounts (default: %(default)s)")
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


def _source(args: argparse.Namespace, skipped: Skipped) -> tuple[Iterator[Example], int | None, str]:
    """The examples, how many are expected (None: unknown) and a description."""
    if args.input is not None:
        return from_file(args.input, skipped), None, f"file {args.input}"
    if args.topic is not None:
        settings = Settings(connection_settings(args))
        return from_topic(settings, args.topic, args.since, args.until, skipped), None, f"topic {args.topic}"
    description = f"generated count={args.count} seed={args.seed} mix={args.mix} rate={args.rate:g}/s accounts={args.accounts}"
    return generated(args.count, args.seed, args.mix, args.rate, args.accounts), args.count, description


def run(args: argparse.Namespace) -> int:
    ruleset, rules_name = _load_rules(args)
    skipped = Skipped()
    examples, total, description = _source(args, skipped)
    progress = Progress("backtest", total)
    save = args.save.open("w", encoding="utf-8") if args.save is not None else None
    try:
        report = backtest(saving(examples, save) if save else examples, ruleset, skipped, progress)
    finally:
        if save:
            save.close()
    progress.close()
    for reason in skipped.reasons:
        print(f"backtest: skipped {reason}", file=sys.stderr)
    if skipped.total:
        print(f"backtest: skipped {skipped.total} records: {dict(skipped.counts)}", file=sys.stderr)
    title = f"rules {rules_name} on {description}"
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report, title), indent=2) + "\n", encoding="utf-8")
    print(render(report, title))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the backtest; 2 for bad arguments, a bad rule set or an unreadable input, 1 for Kafka failures, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    if (args.since is not None or args.until is not None) and args.topic is None:
        print("backtest: error: --since and --until need --topic", file=sys.stderr)
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
