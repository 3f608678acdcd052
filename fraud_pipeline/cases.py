"""Cases, labels and the audit trail: what analysts decide about held payments, and what it says of the rules.

A payment the detector holds for review (``outcome: review``) is a case. An
analyst claims it (one at a time), then resolves it as fraud or legit with a
note; the resolution is a **label**, published to the compacted labels topic
keyed by payment id (a later label of the same payment replaces it)::

    {"payment_id": "...", "verdict": "fraud", "analyst": "ana", "at_ms": 1764770000000,
     "note": "card reported stolen", "score": 0.5, "outcome": "review",
     "rules": ["large@1", "bitcoin@1"], "ruleset": "3f2a9c1b"}

``rules`` are the rules that fired on the payment (id@version, shadow ones
included), ``ruleset`` the version of the rule set in force (``RuleSet.version``).
Everything an analyst does is an **audit** record, keyed by the analyst::

    {"at_ms": ..., "user": "ana", "action": "resolve", "target": "<payment id>", "detail": {...}}

Labels measure the rules: a rule's precision is the share of its labelled
payments labelled fraud (per rule version), Precision@k the share of fraud
among the k highest-scoring labelled payments (an alert budget of k).
Pure Python: no Kafka.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .payment import is_text

VERDICTS = ("fraud", "legit")
ACTIONS = (
    "sign-in", "sign-in-refused", "sign-out", "claim", "release", "resolve", "list-create", "list-add", "list-remove",
    "snooze", "rule-propose", "rule-evidence", "rule-approve", "rule-reject", "rule-rollback",
    "rule-emergency", "rule-acknowledge",
)
MAX_NOTE_CHARS = 2000


class RecordError(ValueError):
    """A label or audit record that cannot be read."""


def text_field(data: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    """A text field of a record's JSON object ("" when absent and not ``required``); RecordError if it is not UTF-8
    text, or is empty and ``required``."""
    value = data.get(key, "" if not required else None)
    if not is_text(value) or (required and not value):
        raise RecordError(f"{key} must be {'non-empty ' if required else ''}UTF-8 text, got {value!r}")
    return value


@dataclass(frozen=True)
class Label:
    """An analyst's verdict on one payment."""

    payment_id: str
    verdict: str
    analyst: str
    at_ms: int
    note: str = ""
    score: float = 0.0
    outcome: str = "review"
    rules: tuple[str, ...] = ()
    """The rules that fired on the payment, ``id@version`` (shadow ones included)."""
    ruleset: str = ""
    """The version of the rule set in force when the case was resolved (``RuleSet.version``)."""

    @property
    def fraud(self) -> bool:
        return self.verdict == "fraud"

    def to_dict(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "verdict": self.verdict, "analyst": self.analyst, "at_ms": self.at_ms,
                "note": self.note, "score": self.score, "outcome": self.outcome, "rules": list(self.rules),
                "ruleset": self.ruleset}

    def to_record(self) -> tuple[bytes, bytes]:
        """The labels topic's record: keyed by payment id."""
        return self.payment_id.encode("utf-8"), json.dumps(self.to_dict()).encode("utf-8")

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None) -> Label:
        """A label read back; RecordError if it is not one (or its key is not its payment id)."""
        try:
            data = json.loads(value or b"")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RecordError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RecordError("a label is a JSON object")
        verdict = data.get("verdict")
        if verdict not in VERDICTS:
            raise RecordError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        at_ms, score, rules = data.get("at_ms"), data.get("score", 0.0), data.get("rules", [])
        if not isinstance(at_ms, int) or isinstance(at_ms, bool):
            raise RecordError(f"at_ms must be epoch milliseconds, got {at_ms!r}")
        if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(_float(score)):
            raise RecordError(f"score must be a finite number, got {score!r}")
        if not isinstance(rules, list) or not all(is_text(r) for r in rules):
            raise RecordError(f"rules must be a list of id@version, got {rules!r}")
        label = cls(text_field(data, "payment_id"), verdict, text_field(data, "analyst"), at_ms,
                    text_field(data, "note", required=False), float(score),
                    text_field(data, "outcome", required=False) or "review", tuple(rules),
                    text_field(data, "ruleset", required=False))
        if key is not None and key != label.payment_id.encode("utf-8"):  # valid UTF-8: checked by text_field
            raise RecordError(f"the record's key {key!r} is not its payment id {label.payment_id!r}")
        return label


def _float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond a float's range
        return math.inf


@dataclass(frozen=True)
class AuditEvent:
    """One thing a user did in the console."""

    at_ms: int
    user: str
    action: str
    target: str = ""
    """What it was done to: a payment id, ``list/value``, a list's name."""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "user": self.user, "action": self.action, "target": self.target,
                "detail": dict(self.detail)}

    def to_record(self) -> tuple[bytes, bytes]:
        """The audit topic's record: keyed by the user."""
        return self.user.encode("utf-8"), json.dumps(self.to_dict(), default=str, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_record(cls, value: bytes | None) -> AuditEvent:
        try:
            data = json.loads(value or b"")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RecordError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("action") not in ACTIONS:
            raise RecordError(f"an audit record has an action among {', '.join(ACTIONS)}")
        at_ms, detail = data.get("at_ms"), data.get("detail", {})
        if not isinstance(at_ms, int) or not isinstance(detail, dict):
            raise RecordError("at_ms must be epoch milliseconds and detail an object")
        return cls(at_ms, text_field(data, "user"), data["action"], text_field(data, "target", required=False), detail)


@dataclass(frozen=True)
class RulePrecision:
    """One rule version's labelled payments and how many of them were fraud."""

    rule: str
    """``id@version``."""
    labelled: int
    fraud: int

    @property
    def precision(self) -> float | None:
        return self.fraud / self.labelled if self.labelled else None


def latest_labels(labels: Iterable[Label]) -> dict[str, Label]:
    """One label per payment: the last one given (as the compacted topic keeps it)."""
    return {label.payment_id: label for label in labels}


def precision_by_rule(labels: Iterable[Label]) -> list[RulePrecision]:
    """Per rule version: labelled payments it fired on, and how many were fraud; sorted by rule."""
    labelled: dict[str, int] = {}
    fraud: dict[str, int] = {}
    for label in labels:
        for rule in label.rules:
            labelled[rule] = labelled.get(rule, 0) + 1
            fraud[rule] = fraud.get(rule, 0) + label.fraud
    return [RulePrecision(rule, labelled[rule], fraud[rule]) for rule in sorted(labelled)]


def precision_at_k(scored: Iterable[tuple[float, bool]], k: int) -> float | None:
    """The share of fraud among the ``k`` highest-scoring labelled payments ((score, fraud) pairs).

    Ties keep the order given (the earliest first). With fewer than k, the
    share among those there are; None with none.
    """
    if k < 1:
        raise ValueError("k must be 1 or more")
    ranked = sorted(scored, key=lambda pair: -pair[0])[:k]
    if not ranked:
        return None
    return sum(fraud for _, fraud in ranked) / len(ranked)
