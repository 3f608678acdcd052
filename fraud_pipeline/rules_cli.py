"""Manage the live fraud rules: list, validate, publish, change a rule's mode, remove.

    python fraud_rules.py list [--rules FILE]
    python fraud_rules.py validate FILE
    python fraud_rules.py publish FILE --reason TEXT [--id ID ...] [--by NAME]
    python fraud_rules.py mode ID enabled|shadow|disabled [--rules FILE]
    python fraud_rules.py remove ID
    python fraud_rules.py propose FILE --note TEXT [--by NAME] [--since T] [--until T] [--no-evidence]
    python fraud_rules.py proposals
    python fraud_rules.py proposal ID
    python fraud_rules.py evidence ID [--since T] [--until T]
    python fraud_rules.py approve ID --note TEXT [--by NAME]
    python fraud_rules.py reject ID --note TEXT [--by NAME]
    python fraud_rules.py rollback ID --note TEXT [--by NAME]
    python fraud_rules.py acknowledge ID --note TEXT [--by NAME]
    python fraud_rules.py lists create NAME --field TO --level block|review|allow|watch [--overridable]
    python fraud_rules.py lists add NAME VALUE ... [--ttl 10m] [--reason TEXT] [--by NAME]
    python fraud_rules.py lists remove NAME [VALUE ...]
    python fraud_rules.py lists show [NAME]
    python fraud_rules.py lists migrate

Rules live in the compacted rules topic, one record per rule keyed by its id;
running detectors apply each record within about a second (see
fraud_pipeline.live_rules). ``publish`` validates every rule first and
publishes nothing if one is invalid. ``mode`` republishes the rule with the
new mode and the next version. ``list`` and ``mode`` start from the baseline
rule set the detectors run with (``--rules FILE``, else the original BITCOIN
rule), as the detectors do.

Proposals (fraud_pipeline.proposals): ``propose`` records a change in the
compacted proposals topic with its per-rule diff against the live set, then
replays the payments topic's retained records through the live set and the
proposed one (fraud_pipeline.evidence; the labels topic's verdicts for
precision) and keeps the evidence with it. Another admin approves it (which
publishes it, as ``publish`` does) or rejects it, each with a note;
``rollback`` publishes again the rules an approved proposal replaced and
removes those it added. ``publish`` stays for emergencies: it needs a reason
and is recorded as an emergency change, unreviewed until another admin
acknowledges it. Every step goes to the audit topic. A proposal whose evidence predates a change of
the live set is stale: ``evidence ID`` runs it again.

Lists (fraud_pipeline.rules.lists): each list is defined in the compacted list
definitions topic (one record per list, written by the rules admin only), its
entries live in the compacted lists topic (one record per entry, written by
the console too); running detectors apply a change within about a second and
a half. ``lists remove NAME`` without values removes the list and every entry
it has. ``lists migrate`` moves the definitions an earlier version kept in the
lists topic to the definitions topic (detectors now refuse them there).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .backtest import Skipped, from_topic, parse_time, read_labels
from .cases import AuditEvent
from .clients import ClientError, Consumer, Record
from .config import Settings, build_parser, settings_from_args
from .errors import PipelineError
from .evidence import evidence, render, rule_changes
from .kafka_io import make_producer, make_topic_reader, read_latest, read_span
from .live_rules import LiveLists, LiveRules, LiveTopic, Reject
from .proposals import APPROVED, REJECTED, VERB, Proposal, ProposalError, new_id, proposed_set
from .rules import MODES, ORIGINAL, Rule, RuleError, RuleSet, load_ruleset, parse_rule
from .rules.definitions import group_label, read_document
from .rules.fields import FIELDS
from .rules.lists import (
    BLOCK,
    LEVELS,
    SNOOZE,
    SNOOZE_PREFIX,
    ListBook,
    ListEntry,
    ListSpec,
    duration_s,
    entry_key,
    entry_record,
    list_key,
    list_record,
    utc,
)
from .runtime import Progress, cli_main, setup_logging
from .stage import BatchError, Output
from .topics import prepare_topics

NAME = "fraud_rules"
PROPOSAL_COMMANDS = ("propose", "proposals", "proposal", "evidence", "approve", "reject", "rollback", "acknowledge")


def rules_in_file(path: str) -> list[Rule]:
    """The rules of a file holding a rule set, a list of rules, or one rule; RuleError if any is invalid."""
    data = read_document(Path(path))
    if isinstance(data, dict) and "rules" in data:
        return list(load_ruleset(path).rules)
    items = data if isinstance(data, list) else [data]
    rules = [parse_rule(item) for item in items]
    RuleSet(1.0, tuple(rules))  # refuses duplicate ids
    return rules


Live = TypeVar("Live", bound=LiveTopic)


def _read_to_end(settings: Settings, topic: str, client_id: str, follow: Callable[[Consumer, Reject], Live],
                 also: tuple[str, ...] = ()) -> tuple[Live, list[str]]:
    """A compacted topic (and the ``also`` topics) read to its end as running detectors read it, and the records
    they reject."""
    rejected: list[str] = []

    def note(record: Record, reason: str) -> None:
        rejected.append(f"{record.topic} offset {record.offset}: {reason}" if also else f"offset {record.offset}: {reason}")

    reader = make_topic_reader(settings, topic, client_id, *also)
    try:
        live = follow(reader, note)
        live.catch_up()
        return live, rejected
    finally:
        reader.close()


def current_rules(settings: Settings, baseline: RuleSet) -> tuple[RuleSet, list[str]]:
    """The rule set running detectors hold now, and the topic's records they reject."""
    live, rejected = _read_to_end(settings, settings.topics.rules, f"{NAME}-list",
                                  lambda reader, note: LiveRules(baseline, reader, note))
    return live.current, rejected


def publish(settings: Settings, items: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Write ``(rule id, rule data or None for removal)`` records to the rules topic and wait for them."""
    publish_records(settings, settings.topics.rules, [
        (rule_id.encode("utf-8"), None if data is None else json.dumps(data).encode("utf-8")) for rule_id, data in items])


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
    live, _ = current_rules(settings, _baseline(args))
    change = Proposal.emergency_change(args.by, args.reason, int(time.time() * 1000), rules, live)
    publish(settings, [(rule.id, dict(rule.source or {})) for rule in rules])
    for rule in rules:
        print(f"published {rule.ref} ({rule.mode}) to {settings.topics.rules}")
    # Recorded once published: a user refused the rules topic is refused before anything is recorded.
    prepare_topics(settings, reads=[settings.topics.proposals], writes=[settings.topics.proposals, settings.topics.audit])
    _record(settings, change, args.by, "rule-emergency", {"reason": args.reason, "rules": [rule.ref for rule in rules]})
    print(f"recorded as emergency change {change.id}, unreviewed until another admin acknowledges it "
          f"(fraud_rules.py acknowledge {change.id} --note TEXT)")
    return 0


def cmd_acknowledge(settings: Settings, args: argparse.Namespace) -> int:
    change = _proposal(settings, args.id).acknowledged(args.by, int(time.time() * 1000))
    _record(settings, change, args.by, "rule-acknowledge", {"note": args.note, "publisher": change.proposer})
    print(f"{change.id} acknowledged by {args.by}")
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


def read_proposals(settings: Settings) -> tuple[dict[str, Proposal], list[str]]:
    """Every proposal in the proposals topic (the last record of each id), and the records that cannot be read."""
    rejected: list[str] = []
    proposals = read_latest(settings, settings.topics.proposals,
                            lambda record: Proposal.from_record(record.key, record.value or b""),
                            lambda record, exc: rejected.append(f"offset {record.offset}: {exc}"),
                            (ProposalError,), client_id=f"{NAME}-proposals")
    return proposals, rejected


def _proposal(settings: Settings, proposal_id: str) -> Proposal:
    proposals, _ = read_proposals(settings)
    found = proposals.get(proposal_id)
    if found is None:
        raise ProposalError(f"no proposal {proposal_id!r}; the proposals are: {', '.join(sorted(proposals)) or 'none'}")
    return found


def _record(settings: Settings, proposal: Proposal, by: str, action: str, detail: dict[str, Any]) -> None:
    """Write the proposal's new state, then its audit record."""
    event = AuditEvent(int(time.time() * 1000), by, action, proposal.id, detail)
    write_records(settings, [(settings.topics.proposals, *proposal.to_record()), (settings.topics.audit, *event.to_record())])


def _run_evidence(settings: Settings, args: argparse.Namespace, proposal: Proposal, live: RuleSet) -> int:
    """Replay the payments topic (up to --until; reported from --since, the records before it filling the windows)
    through the live and the proposed set, keep the evidence with the proposal and print it."""
    skipped = Skipped()
    labels = read_labels(settings, settings.topics.labels, skipped)
    progress = Progress(f"reading {settings.topics.payments}", None)
    examples = []
    for example in from_topic(settings, settings.topics.payments, None, args.until, skipped, labelled_only=False):
        examples.append(example)
        if len(examples) % 10_000 == 0:
            progress(len(examples))
    progress(len(examples))
    progress.close()
    print(f"replaying {len(examples):,} payments through the live set ({live.version}) and the proposed one",
          file=sys.stderr)
    started = time.monotonic()
    found = evidence(examples, live, proposed_set(live, proposal.parsed_rules()), labels, since_ms=args.since)
    seconds = time.monotonic() - started
    span = {"topic": settings.topics.payments, "since_ms": args.since, "until_ms": args.until, "read": len(examples),
            "skipped": dict(skipped.counts), "labels": len(labels), "seconds": round(seconds, 1)}
    updated = proposal.with_evidence(found.to_dict(), live.version, span)
    _record(settings, updated, args.by, "rule-evidence", {"payments": found.payments, "changed": found.changed,
                                                         "live": live.version})
    print(render(found.to_dict()))
    print(f"evidence of {proposal.id} ready: {found.payments:,} payments in {seconds:.1f}s")
    return 0


def cmd_propose(settings: Settings, args: argparse.Namespace) -> int:
    rules = rules_in_file(args.file)
    live, _ = current_rules(settings, _baseline(args))
    changes = rule_changes(live, proposed_set(live, rules))
    if not changes:
        raise RuleError("", f"{args.file} changes nothing in the live rules ({live.version})")
    now_ms = int(time.time() * 1000)
    proposal = Proposal(new_id(now_ms), args.by, args.note, now_ms, tuple(dict(rule.source or {}) for rule in rules),
                        live.version, tuple(change.to_dict() for change in changes))
    _record(settings, proposal, args.by, "rule-propose", {"note": args.note, "changes": [c.to_dict() for c in changes]})
    print(f"proposal {proposal.id} by {proposal.proposer} against the live set {live.version}:")
    for change in changes:
        print(f"  {change.change} {change.id}: {change.live or '-'} -> {change.proposed or '-'}")
    if args.no_evidence:
        print(f"its evidence is not run: fraud_rules.py evidence {proposal.id}")
        return 0
    return _run_evidence(settings, args, proposal, live)


def cmd_evidence(settings: Settings, args: argparse.Namespace) -> int:
    proposal = _proposal(settings, args.id)
    live, _ = current_rules(settings, _baseline(args))
    return _run_evidence(settings, args, proposal, live)


def cmd_proposals(settings: Settings, args: argparse.Namespace) -> int:
    proposals, rejected = read_proposals(settings)
    live, _ = current_rules(settings, _baseline(args))
    print(f"{len(proposals)} proposal(s) in {settings.topics.proposals}; the live set is {live.version}")
    print("| id | state | proposer | proposed | changes | note | decided by |")
    print("|---|---|---|---|---|---|---|")
    for proposal in sorted(proposals.values(), key=lambda p: p.at_ms):
        changes = ", ".join(f"{c['change']} {c['id']}" for c in proposal.changes)
        print(f"| {proposal.id} | {proposal.state(live.version)} | {proposal.proposer} | {utc(proposal.at_ms)} | {changes} | "
              f"{proposal.note} | {proposal.decided_by or ''} |")
    for line in rejected:
        print(f"unreadable record at {line}", file=sys.stderr)
    return 0


def cmd_proposal(settings: Settings, args: argparse.Namespace) -> int:
    proposal = _proposal(settings, args.id)
    live, _ = current_rules(settings, _baseline(args))
    print(f"proposal {proposal.id}: {proposal.state(live.version)}; by {proposal.proposer} at {utc(proposal.at_ms)} "
          f"against {proposal.base}: {proposal.note}")
    for change in proposal.changes:
        print(f"  {change['change']} {change['id']}: {change['live'] or '-'} -> {change['proposed'] or '-'}")
    if proposal.decision is not None:
        print(f"{proposal.decision} by {proposal.decided_by} at {utc(proposal.decided_at_ms or 0)}: {proposal.decision_note}")
    if proposal.evidence is None:
        print("no evidence yet")
    else:
        print(f"\nevidence against the live set {proposal.evidence_base}, over {proposal.evidence_span}:\n")
        print(render(proposal.evidence))
    return 0


def _decide(settings: Settings, args: argparse.Namespace, decision: str) -> int:
    proposal = _proposal(settings, args.id)
    live, _ = current_rules(settings, _baseline(args))
    decided = proposal.decided(decision, args.by, args.note, live, int(time.time() * 1000))
    if decision == APPROVED:  # published first, through publish's all-or-nothing path; then recorded
        rules = proposal.parsed_rules()
        publish(settings, [(rule.id, dict(rule.source or {})) for rule in rules])
    _record(settings, decided, args.by, f"rule-{VERB[decision]}", {"note": args.note, "proposer": proposal.proposer})
    published = f"; published {', '.join(rule.ref for rule in decided.parsed_rules())} to {settings.topics.rules}" \
        if decision == APPROVED else ""
    print(f"{proposal.id} {decision} by {args.by}{published}")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    proposal = _proposal(settings, args.id)
    undone = proposal.rolled_back(args.by, int(time.time() * 1000))
    publish(settings, undone.rollback_records())
    back = [f"{rule['id']}@{rule.get('version', 1)}" for rule in undone.previous]
    _record(settings, undone, args.by, "rule-rollback", {"note": args.note, "republished": back, "removed": list(undone.added)})
    print(f"{proposal.id} rolled back by {args.by}: published {', '.join(back) or 'nothing'} again"
          f"{'; removed ' + ', '.join(undone.added) if undone.added else ''} on {settings.topics.rules}")
    return 0


def cmd_approve(settings: Settings, args: argparse.Namespace) -> int:
    return _decide(settings, args, APPROVED)


def cmd_reject(settings: Settings, args: argparse.Namespace) -> int:
    return _decide(settings, args, REJECTED)


def ttl(text: str) -> float:
    """An entry's --ttl: a duration (lists.duration_s)."""
    try:
        return duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def current_lists(settings: Settings) -> tuple[ListBook, list[str]]:
    """The lists and entries running detectors hold now, and the topics' records they reject."""
    topics = settings.topics
    live, rejected = _read_to_end(
        settings, topics.list_definitions, f"{NAME}-lists",
        lambda reader, note: LiveLists(reader, note, ListBook(), definitions=topics.list_definitions), also=(topics.lists,))
    return live.book, rejected


def publish_records(settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    """Write records to a topic and wait for them."""
    write_records(settings, [(topic, key, value) for key, value in records])


def write_records(settings: Settings, records: Sequence[tuple[str, bytes, bytes | None]]) -> None:
    """Write ``(topic, key, value)`` records in order, through one producer, and wait for them."""
    output = Output(make_producer(settings, NAME))
    try:
        for topic, key, value in records:
            output.send(topic, key, value)
        output.flush(timeout_s=30)
    except BatchError as exc:
        raise PipelineError(f"cannot write to {', '.join(dict.fromkeys(topic for topic, _, _ in records))}: {exc}") from None
    finally:
        output.producer.close()


def _spec(book: ListBook, name: str) -> ListSpec:
    spec = book.specs.get(name)
    if spec is None:
        known = ", ".join(sorted(book.specs)) or "none"
        raise RuleError("", f"no list {name!r} (create it with 'lists create'); the lists are: {known}")
    return spec


def cmd_lists_create(settings: Settings, args: argparse.Namespace) -> int:
    spec = ListSpec(args.name, args.field, args.level, args.overridable, args.description)
    key, value = list_record(spec)
    ListBook().define(key, value)  # validates it
    publish_records(settings, settings.topics.list_definitions, [(key, value)])
    overridable = ", overridable" if spec.overridable else ""
    print(f"list {spec.name} ({spec.level}{overridable}) of {spec.field} values published to {settings.topics.list_definitions}")
    return 0


def cmd_lists_add(settings: Settings, args: argparse.Namespace) -> int:
    book, _ = current_lists(settings)
    spec = _spec(book, args.name)
    if spec.level == SNOOZE:
        raise RuleError("", f"{spec.name} is a snooze list: a snooze is made from a resolved case in the console, where it is audited")
    now_ms = int(time.time() * 1000)
    expires = None if args.ttl is None else now_ms + round(args.ttl * 1000)
    records = []
    for value in args.values:
        entry = ListEntry(spec.name, value, args.by, args.reason, now_ms, expires)
        key, data = entry_record(entry)
        ListBook().apply(key, data)  # validates it
        records.append((key, data))
    publish_records(settings, settings.topics.lists, records)
    until = f" until {utc(expires)}" if expires is not None else ""
    print(f"added {len(records)} value(s) of {spec.field} to {spec.name} ({spec.level}){until}: {', '.join(args.values)}")
    return 0


def cmd_lists_remove(settings: Settings, args: argparse.Namespace) -> int:
    book, _ = current_lists(settings)
    if args.values:
        records: list[tuple[bytes, bytes | None]] = [(entry_key(args.name, value), None) for value in args.values]
        what = f"{len(args.values)} value(s) from {args.name}"
    else:
        _spec(book, args.name)
        entries = book.entries.get(args.name, {})
        records = [(entry_key(args.name, value), None) for value in sorted(entries)]
        what = f"list {args.name} and its {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    publish_records(settings, settings.topics.lists, records)
    published = settings.topics.lists
    if not args.values:  # the entries first: a definition removed before them would leave them behind
        publish_records(settings, settings.topics.list_definitions, [(list_key(args.name), None)])
        published += f" and {settings.topics.list_definitions}"
    print(f"removed {what} (tombstones published to {published})")
    return 0


def cmd_lists_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Move the list definitions that an earlier version kept in the lists topic (key NAME) to the list definitions
    topic, and remove them from the lists topic, where detectors now refuse them."""
    topics = settings.topics
    kept: dict[bytes, bytes | None] = {}
    for record in read_span(settings, topics.lists, client_id=f"{NAME}-lists-migrate"):
        if record.key and b"/" not in record.key:
            kept[record.key] = record.value  # the last record of a key is what compaction keeps
    book, _ = current_lists(settings)
    moved: list[tuple[bytes, bytes | None]] = []
    dropped: list[str] = []
    for key, value in kept.items():
        name = key.decode("utf-8", "replace")
        if value is None or name.startswith(SNOOZE_PREFIX) or name in book.specs:
            continue  # removed; a snooze list's name makes it now; defined already (the definitions topic wins)
        try:
            ListBook().define(key, value)
        except RuleError as exc:
            dropped.append(f"{name} ({exc})")
            continue
        moved.append((key, value))
    if moved:
        publish_records(settings, topics.list_definitions, moved)
    tombstones = [(key, None) for key, value in kept.items() if value is not None]
    if tombstones:  # after the definitions are out: a list is never undefined on the way
        publish_records(settings, topics.lists, tombstones)
    for what in dropped:
        print(f"not moved, not a valid list: {what}")
    print(f"{len(moved)} list definition(s) moved from {topics.lists} to {topics.list_definitions}"
          f"{': ' + ', '.join(k.decode() for k, _ in moved) if moved else ''}; {len(tombstones)} removed from {topics.lists}")
    return 0


def cmd_lists_show(settings: Settings, args: argparse.Namespace) -> int:
    book, rejected = current_lists(settings)
    names = [args.name] if args.name else sorted(book.specs)
    if args.name:
        _spec(book, args.name)
    now = book.clock()
    print(f"{len(names)} list(s) in topics {settings.topics.list_definitions} and {settings.topics.lists}")
    print("| list | level | field | value | added by | reason | added | expires |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        spec = book.specs[name]
        level = f"{spec.level}, overridable" if spec.level == BLOCK and spec.overridable else spec.level
        entries = sorted(book.entries.get(name, {}).values(), key=lambda e: e.value)
        if not entries:
            print(f"| {name} | {level} | {spec.field} | (empty) | | | | |")
        for entry in entries:
            expires = "never" if entry.expires_ms is None else utc(entry.expires_ms) + ("" if entry.live(now) else " (expired)")
            print(f"| {name} | {level} | {spec.field} | {entry.value} | {entry.by} | {entry.reason} | "
                  f"{utc(entry.added_ms)} | {expires} |")
    for line in rejected:
        print(f"rejected record at {line}", file=sys.stderr)
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in this environment
        return "fraud_rules"


def _lists_parser(commands: Any) -> None:
    lists = commands.add_parser("lists", help="block, review, allow and watch lists of payment field values")
    sub = lists.add_subparsers(dest="lists_command", required=True, metavar="LISTS_COMMAND")
    create = sub.add_parser("create", help="create a list (or change its level, field or description)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--field", required=True, choices=FIELDS, help="the payment field its values are compared with")
    create.add_argument("--level", required=True, choices=[level for level in LEVELS if level != SNOOZE],
                        help="block: decline; review: hold for review; allow: approve; watch: only rules read it (in_list)")
    create.add_argument("--overridable", action="store_true", help="a block list an allow entry can override")
    create.add_argument("--description", default="", help="what the list is for")
    create.set_defaults(run=cmd_lists_create)
    add = sub.add_parser("add", help="add values to a list, each with who added it, why and an optional expiry")
    add.add_argument("name", metavar="NAME")
    add.add_argument("values", metavar="VALUE", nargs="+")
    add.add_argument("--ttl", type=ttl, metavar="DURATION", help="expire after this long: 90s, 15m, 2h, 7d (default: never)")
    add.add_argument("--reason", default="", help="why (shown in every decision the entry changes)")
    add.add_argument("--by", default=_user(), help="who adds them (default: the user running the command)")
    add.set_defaults(run=cmd_lists_add)
    remove = sub.add_parser("remove", help="remove values from a list, or the list with every entry")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("values", metavar="VALUE", nargs="*")
    remove.set_defaults(run=cmd_lists_remove)
    show = sub.add_parser("show", help="show the lists and their entries, expired ones marked")
    show.add_argument("name", metavar="NAME", nargs="?")
    show.set_defaults(run=cmd_lists_show)
    migrate = sub.add_parser("migrate", help="move the list definitions an earlier version kept in the lists topic to "
                                             "the list definitions topic (once, after upgrading)")
    migrate.set_defaults(run=cmd_lists_migrate)


def build(prog: str = NAME) -> argparse.ArgumentParser:
    parser = build_parser(
        prog, "List, validate, publish, change the mode of, and remove the fraud rules that running detectors apply live; "
        "manage the block, review, allow and watch lists (lists --help).",
        consumes=None,
    )
    # No abbreviations: the commands' --rules FILE is a prefix of the connection's --rules-topic and
    # --rules-rejected-topic, which argparse would otherwise try to match it with (and refuse it as ambiguous).
    parser.allow_abbrev = False
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="show the rules running detectors hold now")
    listing.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
    listing.set_defaults(run=cmd_list)
    validate = commands.add_parser("validate", help="check a rules file without publishing it")
    validate.add_argument("file", metavar="FILE", help="JSON or YAML: a rule set, a list of rules, or one rule")
    validate.set_defaults(run=cmd_validate)
    pub = commands.add_parser("publish", help="emergencies: validate the rules of a file and publish them at once (all "
                              "or none), recorded as an unreviewed emergency change (the usual way: propose)")
    pub.add_argument("file", metavar="FILE", help="JSON or YAML: a rule set, a list of rules, or one rule")
    pub.add_argument("--id", action="append", metavar="ID", help="publish only this rule (repeatable)")
    pub.add_argument("--reason", required=True,
                     help="why this cannot wait for a proposal: the change is recorded as an emergency change, "
                     "unreviewed until another admin acknowledges it")
    pub.add_argument("--by", default=_user(), help="who publishes (default: the user running the command)")
    pub.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
    pub.set_defaults(run=cmd_publish)
    mode = commands.add_parser("mode", help="republish a rule with another mode (and the next version)")
    mode.add_argument("id", metavar="ID")
    mode.add_argument("mode", choices=MODES)
    mode.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
    mode.set_defaults(run=cmd_mode)
    remove = commands.add_parser("remove", help="remove a rule (publish a tombstone for its id)")
    remove.add_argument("id", metavar="ID")
    remove.set_defaults(run=cmd_remove)
    _proposals_parser(commands)
    _lists_parser(commands)
    return parser


def _proposals_parser(commands: Any) -> None:
    def with_baseline(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--rules", metavar="FILE", help="the detectors' baseline rules file (default: the original rule)")
        return sub

    def replayed(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--since", type=parse_time, metavar="T",
                         help="report on payments from this time (epoch ms or ISO-8601); those before fill the windows "
                         "(default: every retained payment)")
        sub.add_argument("--until", type=parse_time, metavar="T", help="the last payment's time (default: the current end)")
        sub.add_argument("--by", default=_user(), help="who runs it (default: the user running the command)")

    propose = with_baseline(commands.add_parser(
        "propose", help="propose a rule change: record it with its diff against the live set, then replay the "
        "payments topic through both sets as its evidence"))
    propose.add_argument("file", metavar="FILE", help="JSON or YAML: a rule set, a list of rules, or one rule")
    propose.add_argument("--note", required=True, help="why the change is proposed")
    propose.add_argument("--no-evidence", action="store_true", help="record it only; run its evidence later (evidence ID)")
    replayed(propose)
    propose.set_defaults(run=cmd_propose)
    listing = with_baseline(commands.add_parser("proposals", help="list the proposals and where each stands"))
    listing.set_defaults(run=cmd_proposals)
    show = with_baseline(commands.add_parser("proposal", help="show one proposal, its evidence and its decision"))
    show.add_argument("id", metavar="ID")
    show.set_defaults(run=cmd_proposal)
    again = with_baseline(commands.add_parser("evidence", help="run a proposal's evidence (again) against the live set"))
    again.add_argument("id", metavar="ID")
    replayed(again)
    again.set_defaults(run=cmd_evidence)
    for name, run, what in (("approve", cmd_approve, "approve a ready proposal and publish it (not its proposer)"),
                            ("reject", cmd_reject, "reject a proposal (not its proposer)")):
        decide = with_baseline(commands.add_parser(name, help=what))
        decide.add_argument("id", metavar="ID")
        decide.add_argument("--note", required=True, help="why")
        decide.add_argument("--by", default=_user(), help="who decides (default: the user running the command)")
        decide.set_defaults(run=run)
    rollback = with_baseline(commands.add_parser(
        "rollback", help="undo an approved proposal: publish the rules it replaced as they were, remove those it added"))
    rollback.add_argument("id", metavar="ID")
    rollback.add_argument("--note", required=True, help="why")
    rollback.add_argument("--by", default=_user(), help="who rolls it back (default: the user running the command)")
    rollback.set_defaults(run=cmd_rollback)
    acknowledge = with_baseline(commands.add_parser("acknowledge", help="acknowledge an emergency change (not its publisher)"))
    acknowledge.add_argument("id", metavar="ID")
    acknowledge.add_argument("--note", required=True, help="what was checked")
    acknowledge.add_argument("--by", default=_user(), help="who acknowledges (default: the user running the command)")
    acknowledge.set_defaults(run=cmd_acknowledge)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build().parse_args(argv)
    settings = settings_from_args(args)
    log = setup_logging(NAME)
    logging.getLogger("fraud_pipeline.live_rules").setLevel(logging.WARNING)  # what list, mode and lists read is printed anyway
    try:
        if args.command == "lists":
            topics = settings.topics
            writes = {"show": [], "create": [topics.list_definitions], "add": [topics.lists]}.get(
                args.lists_command, [topics.lists, topics.list_definitions])
            prepare_topics(settings, reads=[] if args.lists_command == "create" else [topics.lists, topics.list_definitions],
                           writes=writes)
        elif args.command in PROPOSAL_COMMANDS:
            topics = settings.topics
            writes = [] if args.command in ("proposals", "proposal") else [topics.proposals, topics.audit]
            prepare_topics(settings, reads=[topics.rules, topics.proposals, topics.payments, topics.labels],
                           writes=writes + ([topics.rules] if args.command in ("approve", "rollback") else []))
        elif args.command != "validate":
            writes = [settings.topics.rules] if args.command in ("publish", "mode", "remove") else []
            prepare_topics(settings, reads=[settings.topics.rules], writes=writes)
        return int(args.run(settings, args))
    except (RuleError, ProposalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PipelineError, ClientError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
