"""Manage the live fraud rules: list, validate, publish, change a rule's mode, remove.

    python fraud_rules.py list [--rules FILE]
    python fraud_rules.py validate FILE
    python fraud_rules.py publish FILE [--id ID ...]
    python fraud_rules.py mode ID enabled|shadow|disabled [--rules FILE]
    python fraud_rules.py remove ID

Rules live in the compacted rules topic, one record per rule keyed by its id;
running detectors apply each record within about a second (see
fraud_pipeline.live_rules). ``publish`` validates every rule first and
publishes nothing if one is invalid. ``mode`` republishes the rule with the
new mode and the next version. ``list`` and ``mode`` start from the baseline
rule set the detectors run with (``--rules FILE``, else the original BITCOIN
rule), as the detectors do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .clients import ClientError, Record
from .config import Settings, build_parser, settings_from_args
from .errors import PipelineError
from .kafka_io import make_producer, make_topic_reader
from .live_rules import LiveRules
from .rules import MODES, ORIGINAL, Rule, RuleError, RuleSet, load_ruleset, parse_rule
from .rules.definitions import group_label, read_document
from .runtime import cli_main, setup_logging
from .stage import Output
from .topics import prepare_topics

NAME = "fraud_rules"


def rules_in_file(path: str) -> list[Rule]:
    """The rules of a file holding a rule set, a list of rules, or one rule; RuleError if any is invalid."""
    data = read_document(Path(path))
    if isinstance(data, dict) and "rules" in data:
        return list(load_ruleset(path).rules)
    items = data if isinstance(data, list) else [data]
    rules = [parse_rule(item) for item in items]
    RuleSet(1.0, tuple(rules))  # refuses duplicate ids
    return rules


def current_rules(settings: Settings, baseline: RuleSet) -> tuple[RuleSet, list[str]]:
    """The rule set running detectors hold now, and the topic's records they reject."""
    rejected: list[str] = []

    def note(record: Record, reason: str) -> None:
        rejected.append(f"offset {record.offset}: {reason}")

    reader = make_topic_reader(settings, settings.topics.rules, f"{NAME}-list")
    try:
        live = LiveRules(baseline, reader, note)
        live.catch_up()
        return live.current, rejected
    finally:
        reader.close()


def publish(settings: Settings, items: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Write ``(rule id, rule data or None for removal)`` records to the rules topic and wait for them."""
    output = Output(make_producer(settings, NAME))
    try:
        for rule_id, data in items:
            value = None if data is None else json.dumps(data).encode("utf-8")
            output.send(settings.topics.rules, rule_id.encode("utf-8"), value)
        output.flush(timeout_s=30)
    finally:
        output.producer.close()


def _baseline(args: argparse.Namespace) -> RuleSet:
    return load_ruleset(args.rules) if args.rules else ORIGINAL


def _kind(rule: Rule) -> str:
    if rule.aggregate:
        return f"{rule.aggregate.function} by {group_label(rule.aggregate.group_by)} over {rule.aggregate.window_s:g}s"
    if rule.sequence:
        return f"sequence by {group_label(rule.sequence.group_by)} within {rule.sequence.within_s:g}s"
    return "condition"


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    ruleset, rejected = current_rules(settings, _baseline(args))
    print(f"threshold {ruleset.threshold:g}; {len(ruleset.rules)} rule(s) from {args.rules or 'the original rule'} "
          f"and topic {settings.topics.rules}")
    print("| id | version | mode | weight | kind | description |")
    print("|---|---|---|---|---|---|")
    for rule in ruleset.rules:
        print(f"| {rule.id} | {rule.version} | {rule.mode} | {rule.weight:g} | {_kind(rule)} | {rule.description} |")
    for line in rejected:
        print(f"rejected record at {line}", file=sys.stderr)
    return 0


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    rules = rules_in_file(args.file)
    print(f"{args.file}: {len(rules)} valid rule(s): {', '.join(rule.ref for rule in rules)}")
    return 0


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:
    rules = rules_in_file(args.file)
    if args.id:
        missing = sorted(set(args.id) - {rule.id for rule in rules})
        if missing:
            raise RuleError("", f"no rule {', '.join(missing)} in {args.file}")
        rules = [rule for rule in rules if rule.id in args.id]
    publish(settings, [(rule.id, dict(rule.source or {})) for rule in rules])
    for rule in rules:
        print(f"published {rule.ref} ({rule.mode}) to {settings.topics.rules}")
    return 0


def cmd_mode(settings: Settings, args: argparse.Namespace) -> int:
    ruleset, _ = current_rules(settings, _baseline(args))
    rule = ruleset.get(args.id)
    if rule is None:
        raise RuleError("", f"no rule {args.id!r}; the rules are: {', '.join(r.id for r in ruleset.rules) or 'none'}")
    data = dict(rule.source or {}) | {"mode": args.mode, "version": rule.version + 1}
    changed = parse_rule(data)
    publish(settings, [(changed.id, data)])
    print(f"published {changed.ref} ({changed.mode}) to {settings.topics.rules}; was {rule.ref} ({rule.mode})")
    return 0


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    publish(settings, [(args.id, None)])
    print(f"removed {args.id} (tombstone published to {settings.topics.rules})")
    return 0


def build(prog: str = NAME) -> argparse.ArgumentParser:
    parser = build_parser(
        prog, "List, validate, publish, change the mode of, and remove the fraud rules that running detectors apply live.",
        consumes=None,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="show the rules running detectors hold now")
    listing.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
    listing.set_defaults(run=cmd_list)
    validate = commands.add_parser("validate", help="check a rules file without publishing it")
    validate.add_argument("file", metavar="FILE", help="JSON or YAML: a rule set, a list of rules, or one rule")
    validate.set_defaults(run=cmd_validate)
    pub = commands.add_parser("publish", help="validate the rules of a file and publish them (all or none)")
    pub.add_argument("file", metavar="FILE", help="JSON or YAML: a rule set, a list of rules, or one rule")
    pub.add_argument("--id", action="append", metavar="ID", help="publish only this rule (repeatable)")
    pub.set_defaults(run=cmd_publish)
    mode = commands.add_parser("mode", help="republish a rule with another mode (and the next version)")
    mode.add_argument("id", metavar="ID")
    mode.add_argument("mode", choices=MODES)
    mode.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
    mode.set_defaults(run=cmd_mode)
    remove = commands.add_parser("remove", help="remove a rule (publish a tombstone for its id)")
    remove.add_argument("id", metavar="ID")
    remove.set_defaults(run=cmd_remove)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build().parse_args(argv)
    settings = settings_from_args(args)
    log = setup_logging(NAME)
    logging.getLogger("fraud_pipeline.live_rules").setLevel(logging.WARNING)  # what list/mode read is printed anyway
    try:
        if args.command != "validate":
            writes = [settings.topics.rules] if args.command in ("publish", "mode", "remove") else []
            prepare_topics(settings, reads=[settings.topics.rules], writes=writes)
        return int(args.run(settings, args))
    except RuleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PipelineError, ClientError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
