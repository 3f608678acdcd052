"""Rule change proposals: a proposed change, its evidence, and the second person's decision on it.

A proposal is one record in the compacted proposals topic, keyed by its id,
written again whole at each step (the last one is what compaction keeps):

    proposed (evidence running) -> evidence ready -> approved (published) or rejected
    approved -> rolled back (the rules it replaced published again, those it added removed)

An emergency change (``fraud_rules.py publish --reason``) is published at
once and recorded here too, ``unreviewed`` until another admin acknowledges
it; it can be rolled back the same way.

The evidence (fraud_pipeline.evidence) was computed against one version of
the live rule set (``RuleSet.version``); once the live set changes, the
proposal is ``stale`` until its evidence is run again. Only a ready, fresh
proposal can be approved, and never by its proposer (four eyes). Pure: the
CLI (fraud_pipeline.rules_cli) reads and writes the topic.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .cases import RecordError, text_field
from .rules import Rule, RuleError, RuleSet, parse_rule

RUNNING, READY, APPROVED, REJECTED, STALE, ROLLED_BACK = (
    "evidence running", "ready", "approved", "rejected", "stale", "rolled back")
UNREVIEWED, ACKNOWLEDGED = "unreviewed", "acknowledged"
STATES = (RUNNING, READY, APPROVED, REJECTED, STALE, ROLLED_BACK, UNREVIEWED, ACKNOWLEDGED)
VERB = {APPROVED: "approve", REJECTED: "reject"}
"""A decision's verb: what its audit action and messages say."""
MAX_NOTE_CHARS = 2000


class ProposalError(ValueError):
    """A proposal record that cannot be read, or a step it cannot take now (the message says why)."""


def new_id(now_ms: int | None = None) -> str:
    """``P-20261208-0931-a1b2``: the UTC minute it was made and a random part."""
    at = time.gmtime((time.time() * 1000 if now_ms is None else now_ms) / 1000)
    return f"P-{time.strftime('%Y%m%d-%H%M', at)}-{secrets.token_hex(2)}"


def proposed_set(live: RuleSet, rules: Iterable[Rule]) -> RuleSet:
    """The live set with each proposed rule added, or replacing the live rule of its id: what publishing them makes."""
    proposed = live
    for rule in rules:
        proposed = proposed.with_rule(rule)
    return proposed


@dataclass(frozen=True)
class Proposal:
    """A proposed change of the live rules, with its evidence once computed and its decision once taken."""

    id: str
    proposer: str
    note: str
    at_ms: int
    rules: tuple[Mapping[str, Any], ...]
    """The proposed rules as they would be published (each rule's document)."""
    base: str
    """The live set's version when it was proposed."""
    changes: tuple[Mapping[str, Any], ...] = ()
    """The per-rule diff against that live set (evidence.RuleChange.to_dict)."""
    evidence: Mapping[str, Any] | None = None
    """evidence.Evidence.to_dict, once computed."""
    evidence_base: str | None = None
    """The live set's version the evidence was computed against."""
    evidence_span: Mapping[str, Any] = field(default_factory=dict)
    """What was replayed: the topic, since/until, the records read and skipped."""
    decision: str | None = None
    """approved or rejected."""
    decided_by: str | None = None
    decided_at_ms: int | None = None
    decision_note: str = ""
    previous: tuple[Mapping[str, Any], ...] = ()
    """Approved: the live rules it replaced, as they were (what a rollback publishes again)."""
    added: tuple[str, ...] = ()
    """Approved: the ids of the rules it added (what a rollback removes)."""
    rolled_back_by: str | None = None
    rolled_back_at_ms: int | None = None
    emergency: bool = False
    """Published directly, with a reason (its note), without evidence or a second person's approval."""
    acknowledged_by: str | None = None
    acknowledged_at_ms: int | None = None

    @classmethod
    def emergency_change(cls, by: str, reason: str, now_ms: int, rules: Iterable[Rule], live: RuleSet) -> Proposal:
        """The record of rules published directly by ``by``, for ``reason``, over the ``live`` set."""
        if not reason.strip():
            raise ProposalError("an emergency publish needs a reason")
        rules = list(rules)
        made = cls(f"E{new_id(now_ms)[1:]}", by, reason[:MAX_NOTE_CHARS], now_ms,
                   tuple(dict(rule.source or {"id": rule.id}) for rule in rules), live.version, emergency=True)
        return made._replacing(live, rules, decision=APPROVED, decided_by=by, decided_at_ms=now_ms)

    def _replacing(self, live: RuleSet, rules: list[Rule], **changes: Any) -> Proposal:
        """This record with ``changes``, and the ``live`` rules ``rules`` replace and add, kept for a rollback."""
        ids = [rule.id for rule in rules]
        replaced = [rule for rule_id in ids if (rule := live.get(rule_id)) is not None]
        return replace(self, previous=tuple(dict(rule.source or {"id": rule.id}) for rule in replaced),
                       added=tuple(rule_id for rule_id in ids if live.get(rule_id) is None), **changes)

    def acknowledged(self, by: str, now_ms: int) -> Proposal:
        """An emergency change seen and accepted by another admin than its publisher."""
        if not self.emergency:
            raise ProposalError(f"{self.id} is a proposal, not an emergency change: approve or reject it")
        if self.acknowledged_by is not None:
            raise ProposalError(f"{self.id} was acknowledged already, by {self.acknowledged_by}")
        if not by or by == self.proposer:
            raise ProposalError(f"{self.id} was published by {self.proposer}: another admin must acknowledge it (four eyes)")
        return replace(self, acknowledged_by=by, acknowledged_at_ms=now_ms)

    def state(self, live_version: str) -> str:
        """Where it stands against the live set of ``live_version`` (one of STATES)."""
        if self.rolled_back_by is not None:
            return ROLLED_BACK
        if self.emergency:
            return UNREVIEWED if self.acknowledged_by is None else ACKNOWLEDGED
        if self.decision is not None:
            return self.decision
        if self.evidence is None:
            return RUNNING
        return READY if self.evidence_base == live_version else STALE

    def parsed_rules(self) -> list[Rule]:
        return [parse_rule(dict(rule)) for rule in self.rules]

    def with_evidence(self, evidence: Mapping[str, Any], live_version: str, span: Mapping[str, Any]) -> Proposal:
        if self.decision is not None:
            raise ProposalError(f"{self.id} is {self.decision}: its evidence is not run again")
        return replace(self, evidence=dict(evidence), evidence_base=live_version, evidence_span=dict(span))

    def decided(self, decision: str, by: str, note: str, live: RuleSet, now_ms: int) -> Proposal:
        """Approved or rejected by ``by``: refused to its proposer, and (approval) unless its evidence is ready and
        fresh against the ``live`` set, whose rules it replaces and adds are kept for a rollback."""
        live_version = live.version
        if self.emergency:
            raise ProposalError(f"{self.id} was published as an emergency change: acknowledge it, or roll it back")
        if decision not in (APPROVED, REJECTED):
            raise ProposalError(f"a decision is {APPROVED} or {REJECTED}, not {decision!r}")
        if not by:
            raise ProposalError("a decision needs the name of who takes it")
        if by == self.proposer:
            raise ProposalError(f"{self.id} was proposed by {by}: another admin must {VERB[decision]} it (four eyes)")
        state = self.state(live_version)
        if state in (APPROVED, REJECTED):
            raise ProposalError(f"{self.id} is already {state}")
        if decision == APPROVED and state != READY:
            why = ("its evidence is still running" if state == RUNNING else
                   "the live rules changed since its evidence was computed: run it again (fraud_rules.py evidence ID)")
            raise ProposalError(f"{self.id} cannot be approved: {why}")
        decided = replace(self, decision=decision, decided_by=by, decided_at_ms=now_ms, decision_note=note[:MAX_NOTE_CHARS])
        return decided if decision == REJECTED else decided._replacing(live, self.parsed_rules())

    def rolled_back(self, by: str, now_ms: int) -> Proposal:
        """Undone by ``by``: only an approved proposal, once."""
        if self.decision != APPROVED:
            raise ProposalError(f"{self.id} was not approved: nothing of it is live to roll back")
        if self.rolled_back_by is not None:
            raise ProposalError(f"{self.id} was rolled back already, by {self.rolled_back_by}")
        if not by:
            raise ProposalError("a rollback needs the name of who does it")
        return replace(self, rolled_back_by=by, rolled_back_at_ms=now_ms)

    def rollback_records(self) -> list[tuple[str, dict[str, Any] | None]]:
        """What a rollback publishes to the rules topic: each replaced rule as it was, a tombstone for each added one."""
        return [(str(rule["id"]), dict(rule)) for rule in self.previous] + [(rule_id, None) for rule_id in self.added]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "proposer": self.proposer, "note": self.note, "at_ms": self.at_ms,
                "rules": [dict(rule) for rule in self.rules], "base": self.base,
                "changes": [dict(change) for change in self.changes], "evidence": self.evidence,
                "evidence_base": self.evidence_base, "evidence_span": dict(self.evidence_span), "decision": self.decision,
                "decided_by": self.decided_by, "decided_at_ms": self.decided_at_ms, "decision_note": self.decision_note,
                "previous": [dict(rule) for rule in self.previous], "added": list(self.added),
                "rolled_back_by": self.rolled_back_by, "rolled_back_at_ms": self.rolled_back_at_ms,
                "emergency": self.emergency, "acknowledged_by": self.acknowledged_by,
                "acknowledged_at_ms": self.acknowledged_at_ms}

    def to_record(self) -> tuple[bytes, bytes]:
        return self.id.encode("utf-8"), json.dumps(self.to_dict(), ensure_ascii=False, default=str).encode("utf-8")

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes) -> Proposal:
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProposalError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProposalError("a proposal is a JSON object")
        rules, changes, at_ms = data.get("rules"), data.get("changes", []), data.get("at_ms")
        if not isinstance(rules, list) or not rules or not all(isinstance(rule, dict) for rule in rules):
            raise ProposalError("a proposal's rules are a non-empty list of rules")
        if not isinstance(changes, list) or not isinstance(at_ms, int):
            raise ProposalError("a proposal's changes are a list and at_ms epoch milliseconds")
        evidence, decision = data.get("evidence"), data.get("decision")
        previous, added = data.get("previous", []), data.get("added", [])
        if not (isinstance(previous, list) and all(isinstance(rule, dict) and "id" in rule for rule in previous)
                and isinstance(added, list) and all(isinstance(rule_id, str) for rule_id in added)):
            raise ProposalError("a proposal's previous rules are a list of rules and its added ids a list of ids")
        if evidence is not None and not isinstance(evidence, dict):
            raise ProposalError("a proposal's evidence is an object")
        if decision not in (None, APPROVED, REJECTED):
            raise ProposalError(f"a proposal's decision is {APPROVED} or {REJECTED}, got {decision!r}")
        try:
            proposal = cls(
                text_field(data, "id"), text_field(data, "proposer"), text_field(data, "note", required=False), at_ms,
                tuple(rules), text_field(data, "base"), tuple(changes), evidence, data.get("evidence_base"),
                data.get("evidence_span") or {}, decision, data.get("decided_by"), data.get("decided_at_ms"),
                text_field(data, "decision_note", required=False), tuple(previous), tuple(added),
                data.get("rolled_back_by"), data.get("rolled_back_at_ms"), data.get("emergency") is True,
                data.get("acknowledged_by"), data.get("acknowledged_at_ms"))
        except RecordError as exc:
            raise ProposalError(f"a proposal's {exc}") from None
        if key is not None and key != proposal.id.encode("utf-8"):
            raise ProposalError(f"the record's key {key!r} is not its id {proposal.id!r}")
        try:
            proposal.parsed_rules()
        except RuleError as exc:
            raise ProposalError(f"{proposal.id}: a proposed rule is invalid: {exc}") from None
        return proposal
