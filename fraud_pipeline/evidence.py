"""What a proposed rule set would have changed: the same payments decided by the live set and by the proposed one.

The evidence a rule change is approved on (docs/rules.md): both sets replay
the same records in the same order through the detector's own decision path
(``backtest.decided``, which warms each set's state from the records before
any payment it reports on), and the two decisions of each payment are
compared. Pure: the records and the labels come from the caller.

- ``rule_changes``: the proposal as a per-rule diff against the live set;
- ``Evidence``: outcome counts before and after, overall and per rule; alerts
  (a review or a decline) added and removed; the review queue's load per day;
  precision and Precision@k over the labelled payments; declines added on
  payments labelled legit; the accounts with most changed decisions; a sample
  of changed decisions with both sets' reasons.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .backtest import KEY_PARTITIONS, Example, decided
from .cases import precision_at_k
from .rules import Decision, RuleSet
from .rules.lists import APPROVE, DECLINE, OUTCOMES, REVIEWED
from .scenarios import FRAUD, LEGIT

SAMPLE = 20
"""Changed decisions kept as examples, the first in the records' order."""
TOP_ACCOUNTS = 10
PRECISION_AT = 100
"""k of Precision@k: about what a review team works through in a shift."""


@dataclass(frozen=True)
class RuleChange:
    """One rule's difference between the live set and the proposed one (``id@version (mode)``, None where absent)."""

    id: str
    change: str
    """added, removed, or changed."""
    live: str | None
    proposed: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "change": self.change, "live": self.live, "proposed": self.proposed}


def rule_changes(live: RuleSet, proposed: RuleSet) -> list[RuleChange]:
    """The rules the proposed set adds, removes or changes (definition, version, mode or weight), and its thresholds
    where they differ (as the pseudo-rules ``threshold`` and ``review_threshold``)."""

    def shown(rule: Any) -> str:
        return f"{rule.ref} ({rule.mode}, weight {rule.weight:g})"

    changes = []
    for name in ("threshold", "review_threshold"):
        before, after = getattr(live, name), getattr(proposed, name)
        if before != after:
            changes.append(RuleChange(name, "changed", None if before is None else f"{before:g}",
                                      None if after is None else f"{after:g}"))
    for rule in proposed.rules:
        old = live.get(rule.id)
        if old is None:
            changes.append(RuleChange(rule.id, "added", None, shown(rule)))
        elif (dict(old.source or {}), old.version, old.mode, old.weight) != (dict(rule.source or {}), rule.version,
                                                                             rule.mode, rule.weight):
            changes.append(RuleChange(rule.id, "changed", shown(old), shown(rule)))
    changes += [RuleChange(rule.id, "removed", shown(rule), None) for rule in live.rules if proposed.get(rule.id) is None]
    return changes


@dataclass
class Side:
    """One rule set's decisions over the replayed payments."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """Payments per outcome (approve, review, decline)."""
    rules: Counter[str] = field(default_factory=Counter)
    """Per rule id, the payments it fired on (shadow rules included)."""
    labelled_alerts: int = 0
    """Labelled payments held for review or declined."""
    labelled_true_alerts: int = 0
    """... of them labelled fraud."""
    scored: list[tuple[float, bool]] = field(default_factory=list)
    """(score, labelled fraud) of each labelled payment some rule scored, for Precision@k."""

    @property
    def precision(self) -> float | None:
        return self.labelled_true_alerts / self.labelled_alerts if self.labelled_alerts else None

    def precision_at(self, k: int) -> float | None:
        return precision_at_k(self.scored, k)

    def add(self, decision: Decision, label: str | None) -> None:
        outcome = decision.outcome
        self.outcomes[outcome] += 1
        for fired in decision.fired:
            self.rules[fired.id] += 1
        if label is None:
            return
        fraud = label == FRAUD
        if outcome != APPROVE:
            self.labelled_alerts += 1
            self.labelled_true_alerts += fraud
        if decision.score > 0:
            self.scored.append((decision.score, fraud))

    def to_dict(self, k: int) -> dict[str, Any]:
        return {"outcomes": {outcome: self.outcomes[outcome] for outcome in OUTCOMES}, "rules": dict(sorted(self.rules.items())),
                "labelled_alerts": self.labelled_alerts, "labelled_true_alerts": self.labelled_true_alerts,
                "precision": self.precision, "precision_at_k": self.precision_at(k)}


@dataclass(frozen=True)
class Changed:
    """A payment the two sets decide otherwise: its outcome and reasons under each."""

    payment_id: str
    account: str
    live: str
    proposed: str
    live_reasons: tuple[str, ...]
    proposed_reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "account": self.account, "live": self.live, "proposed": self.proposed,
                "live_reasons": list(self.live_reasons), "proposed_reasons": list(self.proposed_reasons)}


@dataclass
class Evidence:
    """The live and the proposed set over the same payments, and what differs."""

    payments: int = 0
    labelled: int = 0
    live: Side = field(default_factory=Side)
    proposed: Side = field(default_factory=Side)
    changed: int = 0
    """Payments whose outcome differs."""
    alerts_added: int = 0
    """Approved by the live set, held or declined by the proposed one."""
    alerts_removed: int = 0
    declines_added_on_legit: int = 0
    """Payments labelled legit the proposed set declines and the live set did not."""
    review_per_day: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per UTC day of the payments' event time, those held for review (live, proposed)."""
    accounts: Counter[str] = field(default_factory=Counter)
    """Changed decisions per account."""
    sample: list[Changed] = field(default_factory=list)
    k: int = PRECISION_AT

    def to_dict(self) -> dict[str, Any]:
        return {
            "payments": self.payments, "labelled": self.labelled, "changed": self.changed,
            "alerts_added": self.alerts_added, "alerts_removed": self.alerts_removed,
            "declines_added_on_legit": self.declines_added_on_legit, "k": self.k,
            "live": self.live.to_dict(self.k), "proposed": self.proposed.to_dict(self.k),
            "review_per_day": {day: list(pair) for day, pair in sorted(self.review_per_day.items())},
            "accounts": [[account, n] for account, n in self.accounts.most_common(TOP_ACCOUNTS)],
            "sample": [change.to_dict() for change in self.sample],
        }


def _day(event_ms: int) -> str:
    return datetime.datetime.fromtimestamp(event_ms / 1000, datetime.UTC).strftime("%Y-%m-%d")


def _reasons(decision: Decision) -> tuple[str, ...]:
    return tuple(fired.describe() for fired in decision.fired)


def evidence(examples: Iterable[Example], live: RuleSet, proposed: RuleSet, labels: Mapping[str, str] | None = None, *,
             since_ms: int | None = None, partitions: int = KEY_PARTITIONS, k: int = PRECISION_AT) -> Evidence:
    """Both sets over the same ``examples`` (in their order), as the detector decides them.

    ``labels``: the labels topic's verdicts by payment id, the only payments labelled; None: the examples' own labels
    (a generated data set's scenarios). ``since_ms``: the payments before this event time are decided (each set's
    windows fill with them) but not reported on."""
    kept = list(examples)
    found = Evidence(k=k)
    for (example, before), (_, after) in zip(decided(kept, live, partitions), decided(kept, proposed, partitions), strict=True):
        if since_ms is not None and example.event_ms < since_ms:
            continue
        payment = example.payment
        label = example.label if labels is None else labels.get(payment.payment_id or "")
        label = label if label in (FRAUD, LEGIT) else None
        found.payments += 1
        found.labelled += label is not None
        found.live.add(before, label)
        found.proposed.add(after, label)
        old, new = before.outcome, after.outcome
        if REVIEWED in (old, new):
            day = _day(example.event_ms)
            held = found.review_per_day.get(day, (0, 0))
            found.review_per_day[day] = (held[0] + (old == REVIEWED), held[1] + (new == REVIEWED))
        if old == new:
            continue
        found.changed += 1
        found.alerts_added += old == APPROVE
        found.alerts_removed += new == APPROVE
        found.declines_added_on_legit += label == LEGIT and new == DECLINE
        account = payment.account or ""
        found.accounts[account] += 1
        if len(found.sample) < SAMPLE:
            found.sample.append(Changed(payment.payment_id or "", account, old, new, _reasons(before), _reasons(after)))
    return found


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(data: Mapping[str, Any]) -> str:
    """An evidence's figures (``Evidence.to_dict``, as a proposal keeps them) as Markdown tables, live beside proposed."""
    live, proposed, k = data["live"], data["proposed"], data["k"]
    lines = [f"{data['payments']:,} payments replayed, {data['labelled']:,} labelled; {data['changed']:,} decided otherwise: "
             f"{data['alerts_added']:,} alert(s) added, {data['alerts_removed']:,} removed, "
             f"{data['declines_added_on_legit']:,} decline(s) added on payments labelled legit", "",
             "| | live | proposed |", "|---|---|---|"]
    lines += [f"| {outcome} | {live['outcomes'][outcome]:,} | {proposed['outcomes'][outcome]:,} |" for outcome in OUTCOMES]
    lines += [f"| precision (labelled) | {_share(live['precision'])} | {_share(proposed['precision'])} |",
              f"| precision@{k} (labelled) | {_share(live['precision_at_k'])} | {_share(proposed['precision_at_k'])} |"]
    for rule in sorted(set(live["rules"]) | set(proposed["rules"])):
        lines.append(f"| fired: {rule} | {live['rules'].get(rule, 0):,} | {proposed['rules'].get(rule, 0):,} |")
    for day, (before, after) in data["review_per_day"].items():
        lines.append(f"| held for review on {day} | {before:,} | {after:,} |")
    if data["accounts"]:
        lines += ["", "accounts most affected: " + ", ".join(f"{account} ({n})" for account, n in data["accounts"])]
    for change in data["sample"]:
        lines += ["", f"{change['payment_id']} ({change['account']}): {change['live']} -> {change['proposed']}",
                  "  live: " + ("; ".join(change["live_reasons"]) or "no rule fired"),
                  "  proposed: " + ("; ".join(change["proposed_reasons"]) or "no rule fired")]
    return "\n".join(lines)
