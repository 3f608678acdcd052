"""Rules and lists changed without a restart: the rules and lists topics followed while running.

Rules: a baseline rule set plus the records of the rules topic.

The rules topic is compacted and keyed by rule id. A record's value is one
rule as JSON (the format of fraud_pipeline.rules.definitions); it adds the
rule, or replaces the rule of that id. A tombstone (no value) removes the
rule, the baseline's included. A record that is not a valid rule is logged,
copied to the rejected-rules topic with the reason in its ``error`` header,
and changes nothing: the running set stays as it was.

Lists: the records of the list definitions topic (one per list, key ``NAME``)
and of the lists topic (one per entry, key ``NAME/VALUE``) applied to the
process's ListBook (what ``in_list`` conditions read and the detector matches
payments with). Both are compacted too, a tombstone removing a list or an
entry (the formats are fraud_pipeline.rules.lists'); an invalid record is
rejected the same way, a definition found among the entries included.
An entry's expiry is checked on every payment.

A detector reads each topic from its beginning at start-up, then checks it for
news about once a second between batches (REFRESH_INTERVAL_S): a change
applies within about a second and a half.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from .clients import Batch, ClientError, Consumer, Record
from .errors import PipelineError
from .kafka_io import MAX_POLL_RECORDS, METADATA_TIMEOUT_S, record_source, retrying
from .rules import RuleError, RuleSet, parse_rule
from .rules.lists import LISTS, ListBook

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 1.0
"""How often a running detector looks for new rule records."""
CATCH_UP_TIMEOUT_S = 60.0
"""The longest a detector waits at start-up to read the rules topic to its end."""

Reject = Callable[[Record, str], None]


class LiveTopic:
    """A compacted topic followed while running: read to its end at start, then its news about once a second."""

    def __init__(self, reader: Consumer | None, reject: Reject) -> None:
        self._reader = reader
        self._reject = reject
        self._checked_at = 0.0
        self.applied = 0
        self.rejected = 0
        self.topic_name = "the rules topic"

    def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Apply every record the topic holds now (at start-up, before the first payment)."""
        if self._reader is None:
            return
        try:
            reader = self._reader
            marks = retrying(lambda: reader.watermarks(reader.assignment(), METADATA_TIMEOUT_S))
            ends = {tp: end for tp, (_, end) in marks.items()}
            deadline = time.monotonic() + timeout_s
            while any(self._reader.position(tp) < end for tp, end in ends.items()):
                if time.monotonic() > deadline:
                    raise PipelineError(f"could not read {self.topic_name} to its end in {timeout_s:.0f}s")
                self._apply_batch(self._reader.poll(0.5, MAX_POLL_RECORDS))
        except ClientError as exc:
            raise PipelineError(f"cannot read {self.topic_name}: {exc}") from None
        self._checked_at = time.monotonic()

    def refresh(self) -> bool:
        """Apply records published since the last look (at most once per REFRESH_INTERVAL_S); True if one was applied."""
        if self._reader is None or time.monotonic() - self._checked_at < REFRESH_INTERVAL_S:
            return False
        self._checked_at = time.monotonic()
        before = self.applied
        self._apply_batch(self._reader.poll(0.0, MAX_POLL_RECORDS))
        return self.applied != before

    def _apply_batch(self, batches: Batch) -> None:
        for records in batches.values():
            for record in records:
                self.apply(record)

    def apply(self, record: Record) -> None:
        raise NotImplementedError

    def rejecting(self, record: Record, exc: Exception, what: str) -> None:
        """Count, log and hand over a record that changes nothing; ``what``: ``rule``, ``list``."""
        reason = str(exc) if isinstance(exc, RuleError) else f"unreadable {what} record: {type(exc).__name__}: {exc}"
        self.rejected += 1
        log.error("rejected %s record %s: %s; the running %ss are unchanged", what, record_source(record), reason, what)
        self._reject(record, reason)


class LiveRules(LiveTopic):
    """The current rule set: ``baseline`` with the rules topic's records applied in order."""

    def __init__(self, baseline: RuleSet, reader: Consumer | None, reject: Reject) -> None:
        super().__init__(reader, reject)
        self.current = baseline
        self.check: Callable[[RuleSet], None] = lambda ruleset: None
        """Raises RuleError for a set this detector cannot run (e.g. a window longer than its topics keep)."""

    def refresh(self) -> bool:
        """Apply records published since the last look (at most once per REFRESH_INTERVAL_S); True if the set changed."""
        before = self.current
        super().refresh()
        return self.current is not before

    def apply(self, record: Record) -> None:
        """Apply one record of the rules topic to the current set, or reject it."""
        try:
            changed = _applied(self.current, record)
            self.check(changed)
            self.current = changed
        except Exception as exc:  # a record on the topic, whatever it holds, must not stop the detector
            self.rejecting(record, exc, "rule")
            return
        self.applied += 1
        rule_id = (record.key or b"").decode()  # checked by _applied
        rule = self.current.get(rule_id)
        if rule is None:
            log.info("rule %s removed (%s); %s", rule_id, record_source(record), describe(self.current))
        else:
            log.info("rule %s applied (%s, %s); %s", rule.ref, rule.mode, record_source(record), describe(self.current))


class LiveLists(LiveTopic):
    """The lists of ``book`` (the process's), kept up to date with the list definitions and lists topics: a record
    of the topic named ``definitions`` defines a list, any other is an entry."""

    def __init__(self, reader: Consumer | None, reject: Reject, book: ListBook = LISTS, *, definitions: str) -> None:
        super().__init__(reader, reject)
        self.book = book
        self._definitions = definitions
        self.topic_name = "the lists topics"
        self._misplaced: dict[bytes, Record] = {}
        """Definitions found in the lists topic (an earlier version's), by key: refused once what was read is
        applied, unless a tombstone of the same key came after (``lists migrate`` writes them; compaction keeps
        only the last record of a key, so only the last one counts)."""
        self._catching_up = False

    def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        self._catching_up = True
        try:
            super().catch_up(timeout_s)
        finally:
            self._catching_up = False
        self.refuse_misplaced()

    def _apply_batch(self, batches: Batch) -> None:
        super()._apply_batch(batches)
        if not self._catching_up:
            self.refuse_misplaced()

    def refuse_misplaced(self) -> None:
        """Refuse the definitions read in the lists topic and not removed since (after each batch applied)."""
        for record in self._misplaced.values():
            try:
                self.book.apply(record.key, record.value)  # refuses it, saying why
            except Exception as exc:
                self.rejecting(record, exc, "list")
        self._misplaced.clear()

    def apply(self, record: Record) -> None:
        if record.topic != self._definitions and record.key and b"/" not in record.key:
            if record.value is None:
                self._misplaced.pop(record.key, None)
            else:
                self._misplaced[record.key] = record
            return
        try:
            if record.topic == self._definitions:
                change = self.book.define(record.key, record.value)
            else:
                change = self.book.apply(record.key, record.value)
        except Exception as exc:  # a record on the topic, whatever it holds, must not stop the detector
            self.rejecting(record, exc, "list")
            return
        self.applied += 1
        log.info("%s (%s)", change, record_source(record))


def _applied(ruleset: RuleSet, record: Record) -> RuleSet:
    """``ruleset`` changed by one rules-topic record; RuleError if the record is not a valid rule."""
    if not record.key:
        raise RuleError("key", "a rule record needs the rule id as its key")
    try:
        rule_id = record.key.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleError("key", "the key is not UTF-8") from None
    if record.value is None:
        return ruleset.without(rule_id)
    try:
        data = json.loads(record.value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RuleError("", f"not JSON: {exc}", rule_id) from None
    rule = parse_rule(data)
    if rule.id != rule_id:
        raise RuleError("id", f"the record's key is {rule_id!r} but the rule's id is {rule.id!r}", rule_id)
    return ruleset.with_rule(rule)


def describe(ruleset: RuleSet) -> str:
    """One line: the threshold and each rule with its mode, e.g. ``threshold 1: bitcoin@1, burst@2 (shadow)``."""
    rules = ", ".join(rule.ref + ("" if rule.mode == "enabled" else f" ({rule.mode})") for rule in ruleset.rules)
    return f"threshold {ruleset.threshold:g}: {rules or 'no rules'}"
