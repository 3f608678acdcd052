"""Lists with levels and expiry, review outcomes, in_list: precedence, expiry on a fake clock, formats, lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from fraud_pipeline.clients import Record
from fraud_pipeline.detector import decision_header
from fraud_pipeline.live_rules import LiveLists
from fraud_pipeline.payment import Payment
from fraud_pipeline.processors import explained_fraud_line, fraud_line
from fraud_pipeline.rules import Decision, Engine, MemoryTable, RuleError, parse_ruleset
from fraud_pipeline.rules.conditions import parse_condition
from fraud_pipeline.rules.lists import (
    LISTS,
    ListBook,
    ListEntry,
    ListHit,
    ListSpec,
    duration_s,
    entry_key,
    entry_record,
    list_key,
    list_record,
    outcome,
    snooze_spec,
)

T0 = 1_764_000_000_000


class Clock:
    def __init__(self, ms: float = T0) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms


def book_with(clock: Clock, *lists: tuple[ListSpec, list[tuple[str, int | None]]]) -> ListBook:
    book = ListBook(clock)
    for spec, values in lists:
        book.define(*list_record(spec))
        for value, ttl_s in values:
            expires = None if ttl_s is None else int(clock.ms) + ttl_s * 1000
            book.apply(*entry_record(ListEntry(spec.name, value, "ana", "case 7", int(clock.ms), expires)))
    return book


def pay(to: str = "me", account: str = "ACC1", amount: int = 42, payment_type: str = "VISA") -> Payment:
    return Payment(date="01/22/2023", time="11:50:50", payment_type=payment_type, amount=amount, to=to, account=account)


BLOCK = ListSpec("mules", "TO", "block")
SOFT_BLOCK = ListSpec("suspects", "TO", "block", overridable=True)
REVIEW = ListSpec("watched", "ACCOUNT", "review")
ALLOW = ListSpec("trusted", "ACCOUNT", "allow")
WATCH = ListSpec("noted", "TO", "watch")


def hit(spec: ListSpec) -> ListHit:
    return ListHit(spec.name, spec.level, spec.field, "x", spec.overridable, "ana", "", None)


@pytest.mark.parametrize(("score", "review", "levels", "expected"), [
    (0, None, [], "approve"),
    (1, None, [], "decline"),
    (0.5, 0.5, [], "review"),
    (0.49, 0.5, [], "approve"),
    (0.7 + 0.1, 0.5, [], "review"),  # floats: 0.8 reaches 0.8
    (0, None, [BLOCK], "decline"),
    (0, None, [BLOCK, ALLOW], "decline"),  # a block that cannot be overridden beats an allow
    (0, None, [SOFT_BLOCK, ALLOW], "approve"),  # an overridable block yields to it
    (0, None, [SOFT_BLOCK], "decline"),
    (5, None, [ALLOW], "approve"),  # an allow overrides the rules' score
    (0.6, 0.5, [ALLOW], "approve"),  # and a review
    (0, None, [REVIEW, ALLOW], "approve"),
    (0, None, [REVIEW], "review"),
    (1, 0.5, [REVIEW], "decline"),  # the score's decline beats a review list
    (0, None, [WATCH], "approve"),  # a watch list decides nothing
])
def test_precedence(score: float, review: float | None, levels: list[ListSpec], expected: str) -> None:
    hits = tuple(hit(spec) for spec in levels)
    assert outcome(score, 1.0, review, hits) == expected
    assert Decision(score, 1.0, (), (), review, hits).outcome == expected
    assert Decision(score, 1.0, (), (), review, hits).fraud == (expected == "decline")


def test_an_entry_applies_until_it_expires_on_the_clock() -> None:
    clock = Clock()
    book = book_with(clock, (BLOCK, [("PAYEE-1", 10), ("PAYEE-2", None)]))
    assert [h.value for h in book.hits(pay(to="PAYEE-1"))] == ["PAYEE-1"]
    clock.ms += 9_999
    assert book.hits(pay(to="PAYEE-1")) and book.contains("mules", "PAYEE-1")
    clock.ms += 1
    assert book.hits(pay(to="PAYEE-1")) == () and not book.contains("mules", "PAYEE-1")
    clock.ms += 10 * 365 * 86_400_000
    assert [h.value for h in book.hits(pay(to="PAYEE-2"))] == ["PAYEE-2"]  # no expiry: until removed
    assert [e.value for e in book.live_entries("mules")] == ["PAYEE-2"]


def test_records_add_replace_and_remove() -> None:
    clock = Clock()
    book = book_with(clock, (BLOCK, [("PAYEE-1", None)]), (WATCH, []))
    assert book.leveled and not book.hits(pay(to="me"))
    assert book.apply(entry_key("mules", "PAYEE-1"), None) == "mules/PAYEE-1 removed"
    assert not book.leveled and not book.hits(pay(to="PAYEE-1"))
    # entries can come before their list (a compacted topic keeps no order between keys)
    book.apply(*entry_record(ListEntry("late", "ACC1", "ana", "", T0)))
    assert not book.hits(pay())
    book.define(*list_record(ListSpec("late", "ACCOUNT", "review")))
    assert [h.list for h in book.hits(pay())] == ["late"]
    # a list's level can change; its entries stay
    book.define(*list_record(ListSpec("late", "ACCOUNT", "allow")))
    assert [h.level for h in book.hits(pay())] == ["allow"]
    # removing a list keeps its entries, unmatched (the two topics are read in no order between them)
    assert book.define(list_key("late"), None) == "list late removed"
    assert not book.hits(pay()) and "late" not in book.specs and list(book.entries["late"]) == ["ACC1"]


def test_a_payment_on_several_lists_gets_every_hit_in_name_order() -> None:
    book = book_with(Clock(), (BLOCK, [("PAYEE-1", None)]), (ALLOW, [("ACC1", None)]), (REVIEW, [("ACC1", None)]))
    hits = book.hits(pay(to="PAYEE-1"))
    assert [(h.list, h.level, h.field, h.value) for h in hits] == [
        ("mules", "block", "TO", "PAYEE-1"), ("trusted", "allow", "ACCOUNT", "ACC1"), ("watched", "review", "ACCOUNT", "ACC1")]
    assert outcome(0, 1, None, hits) == "decline"


def test_number_fields_are_listed_as_text() -> None:
    book = book_with(Clock(), (ListSpec("amounts", "AMOUNT", "review"), [("42", None)]))
    assert [h.value for h in book.hits(pay(amount=42))] == ["42"]
    assert book.hits(pay(amount=43)) == ()


@pytest.mark.parametrize(("key", "value", "message"), [
    (None, b"{}", "needs a key"),
    (b"bad name", b"{}", "list name"),
    (b"mules", b"not json", "not JSON"),
    (b"mules", json.dumps({"name": "mules", "field": "NOPE", "level": "block"}).encode(), "list.field"),
    (b"mules", json.dumps({"name": "mules", "field": "TO", "level": "deny"}).encode(), "list.level"),
    (b"mules", json.dumps({"name": "other", "field": "TO", "level": "block"}).encode(), "the list's name is 'other'"),
    (b"mules", json.dumps({"name": "mules", "field": "TO", "level": "allow", "overridable": True}).encode(), "block lists only"),
    (b"mules/P1", json.dumps({"list": "mules", "value": "P1", "by": "ana", "added_ms": T0}).encode(), "an entry's key"),
    (b"snooze.large", json.dumps({"name": "snooze.large", "field": "ACCOUNT", "level": "snooze", "rule": "large"}).encode(),
     "its name"),
    (b"quiet", json.dumps({"name": "quiet", "field": "ACCOUNT", "level": "snooze", "rule": "large"}).encode(), "its name"),
])
def test_invalid_definitions_are_refused_and_change_nothing(key: bytes | None, value: bytes, message: str) -> None:
    book = book_with(Clock(), (BLOCK, [("P1", None)]))
    with pytest.raises(RuleError, match=message):
        book.define(key, value)
    assert book.specs == {"mules": BLOCK} and list(book.entries["mules"]) == ["P1"]


@pytest.mark.parametrize(("key", "value", "message"), [
    (None, b"{}", "needs a key"),
    (b"bad name/P1", b"{}", "list name"),
    (b"mules/P1", b"not json", "not JSON"),
    # whoever may add entries cannot define a list, nor turn a block list into a watch list, nor remove one
    (b"mules", json.dumps({"name": "mules", "field": "TO", "level": "watch"}).encode(), "list definitions topic"),
    (b"mules", None, "list definitions topic"),
    (b"snooze./A", json.dumps({"list": "snooze.", "value": "A", "by": "ana", "added_ms": T0, "expires_ms": T0 + 1}).encode(),
     "list name"),
    (b"mules/P1", json.dumps({"list": "mules", "value": "P2", "by": "ana", "added_ms": T0}).encode(), "the entry is mules/P2"),
    (b"mules/P1", json.dumps({"list": "mules", "value": "P1", "by": "", "added_ms": T0}).encode(), "entry.by"),
    (b"mules/P1", json.dumps({"list": "mules", "value": "P1", "by": "ana", "added_ms": T0, "expires_ms": "soon"}).encode(),
     "entry.expires_ms"),
    (b"mules/P1", json.dumps({"list": "mules", "value": "P1", "by": "ana", "added_ms": T0, "colour": 1}).encode(), "colour"),
])
def test_invalid_entries_are_refused_and_change_nothing(key: bytes | None, value: bytes | None, message: str) -> None:
    book = book_with(Clock(), (BLOCK, [("P1", None)]))
    with pytest.raises(RuleError, match=message):
        book.apply(key, value)
    assert book.specs == {"mules": BLOCK} and list(book.entries["mules"]) == ["P1"]


def test_record_formats() -> None:
    spec = ListSpec("mules", "TO", "block", True, "payees seen collecting")
    assert list_record(spec) == (b"mules", json.dumps(
        {"name": "mules", "field": "TO", "level": "block", "overridable": True, "description": "payees seen collecting"}).encode())
    entry = ListEntry("mules", "PAYEE/7", "ana", "chargeback", T0, T0 + 10_000)
    key, value = entry_record(entry)
    assert key == b"mules/PAYEE/7"  # the first slash separates: values may hold one
    assert json.loads(value) == {"list": "mules", "value": "PAYEE/7", "by": "ana", "reason": "chargeback",
                                 "added_ms": T0, "expires_ms": T0 + 10_000}
    book = ListBook(Clock())
    book.define(*list_record(spec))
    book.apply(key, value)
    assert book.entries["mules"]["PAYEE/7"] == entry


@pytest.fixture
def process_lists() -> Iterator[Clock]:
    """The process's book (what in_list reads) on a fake clock, emptied before and after."""
    clock, saved = Clock(), LISTS.clock
    LISTS.reset()
    LISTS.clock = clock
    try:
        yield clock
    finally:
        LISTS.reset()
        LISTS.clock = saved


def test_in_list_rules_read_the_live_entries(process_lists: Clock) -> None:
    ruleset = parse_ruleset({"threshold": 2, "review_threshold": 1, "rules": [
        {"id": "mule-payee", "when": {"field": "TO", "op": "in_list", "value": "noted"}},
        {"id": "large", "when": {"field": "AMOUNT", "op": ">=", "value": 500}},
    ]})
    engine = Engine(ruleset)
    table = MemoryTable()
    assert engine.decide(pay(to="P1"), T0, table).outcome == "approve"
    LISTS.define(*list_record(WATCH))
    LISTS.apply(*entry_record(ListEntry("noted", "P1", "ana", "", T0, T0 + 5_000)))
    decision = engine.decide(pay(to="P1"), T0, table)
    assert decision.outcome == "review" and [f.reason for f in decision.fired] == ["TO=P1 in list noted"]
    assert engine.decide(pay(to="P1", amount=900), T0, table).outcome == "decline"
    process_lists.ms += 5_000
    assert engine.decide(pay(to="P1"), T0, table).outcome == "approve"
    assert parse_condition({"not": {"field": "TO", "op": "in_list", "value": "noted"}}, "when").holds(pay(to="P1"))


def test_in_list_and_review_threshold_are_validated() -> None:
    with pytest.raises(RuleError, match="list name"):
        parse_condition({"field": "TO", "op": "in_list", "value": ["a"]}, "when")
    with pytest.raises(RuleError, match="review_threshold: must be below the threshold"):
        parse_ruleset({"threshold": 1, "review_threshold": 1, "rules": []})
    ruleset = parse_ruleset({"threshold": 2, "review_threshold": 0.5, "rules": []})
    assert ruleset.to_dict() == {"threshold": 2, "review_threshold": 0.5, "rules": []}
    assert ruleset.with_rules(()).review_threshold == 0.5


def test_the_original_decision_is_unchanged_without_review_or_lists() -> None:
    decision = Decision(1.0, 1.0, ())
    assert decision.to_dict() == {"fraud": True, "score": 1.0, "threshold": 1.0, "rules": []}
    assert decision_header(decision) == ("decision", b"fraud score=1")


def test_decisions_with_review_and_lists_round_trip_and_print() -> None:
    listed = (ListHit("mules", "block", "TO", "P1", False, "ana", "chargeback", T0),)
    decision = Decision(0.0, 1.0, (), (), 0.5, listed)
    data = decision.to_dict()
    assert data["outcome"] == "decline" and data["fraud"] is True and data["lists"][0]["value"] == "P1"
    assert Decision.from_dict(json.loads(decision.to_json())) == decision
    assert decision_header(decision) == ("decision", b"fraud score=0 lists=mules")
    review = Decision(0.5, 1.0, (), (), 0.5)
    assert review.to_dict()["outcome"] == "review" and review.to_dict()["fraud"] is False
    assert decision_header(review) == ("decision", b"review score=0.5")
    payment = pay(to="stranger", amount=420)
    held = replace(payment, decision=review.to_dict())
    assert fraud_line(held) == "[REVIEW] payment held for review to: stranger - 420"
    assert explained_fraud_line(held).splitlines()[1] == "    score 0.5 >= review 0.5: no rule fired"
    declined = replace(payment, decision=decision.to_dict())
    assert fraud_line(declined) == "[ALERT] fraud detected payment to: stranger - 420"  # the original line
    assert explained_fraud_line(declined).splitlines()[1] == (
        "    score 0 < review 0.5: no rule fired; list mules (block): TO=P1, added by ana: chargeback, "
        "until 2025-11-24T16:00:00Z")


def test_durations() -> None:
    assert [duration_s(t) for t in ("90", "90s", "15m", "2h", "7d", "0.5s")] == [90, 90, 900, 7200, 604800, 0.5]
    for bad in ("", "0", "-5s", "5w", "400d"):
        with pytest.raises(ValueError, match=r"duration"):
            duration_s(bad)


SNOOZE_LARGE = snooze_spec("large")


def test_a_snooze_takes_its_rule_out_of_the_score_for_its_account_until_it_expires() -> None:
    clock = Clock()
    book = ListBook(clock)
    book.apply(*entry_record(ListEntry("snooze.large", "ACC1", "ana", "case p-1", T0, T0 + 3_600_000)))
    engine = Engine(parse_ruleset({"threshold": 1, "review_threshold": 0.5, "rules": [
        {"id": "large", "weight": 0.5, "when": {"field": "AMOUNT", "op": ">=", "value": 500}},
        {"id": "bitcoin", "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}},
    ]}))

    def decide(payment: Payment) -> Decision:
        decision = engine.decide(payment, T0)
        hits = book.hits(payment)
        return decision.with_lists(hits) if hits else decision

    snoozed = decide(pay(account="ACC1", amount=600))
    assert snoozed.outcome == "approve" and snoozed.score == 0
    assert [(f.id, f.mode) for f in snoozed.fired] == [("large", "snoozed")]
    assert snoozed.fired[0].describe() == "large@1 [snoozed]: AMOUNT=600 >= 500"
    assert Decision.from_dict(json.loads(snoozed.to_json())) == snoozed
    assert decision_header(snoozed) == ("decision", b"legit score=0 lists=snooze.large")
    # only that rule, only that account
    assert decide(pay(account="ACC1", amount=600, payment_type="BITCOIN")).outcome == "decline"
    assert decide(pay(account="ACC2", amount=600)).outcome == "review"
    clock.ms += 3_600_000
    assert decide(pay(account="ACC1", amount=600)).outcome == "review"


def test_snooze_lists_are_made_by_their_name_and_checked() -> None:
    book = ListBook(Clock())
    with pytest.raises(RuleError, match="for snooze lists only"):
        book.define(b"mules", json.dumps({"name": "mules", "field": "TO", "level": "block", "rule": "large"}).encode())
    # no definition: the first entry of snooze.RULE makes the list, for RULE, on the account
    book.apply(*entry_record(ListEntry("snooze.large", "ACC9", "ana", "", T0, T0 + 1000)))
    assert book.specs["snooze.large"] == SNOOZE_LARGE
    assert (SNOOZE_LARGE.field, SNOOZE_LARGE.level, SNOOZE_LARGE.rule) == ("ACCOUNT", "snooze", "large")
    book = ListBook(Clock())
    with pytest.raises(RuleError, match="a snooze expires within 30 days"):
        book.apply(*entry_record(ListEntry("snooze.large", "ACC1", "ana", "", T0)))
    with pytest.raises(RuleError, match="a snooze expires within 30 days"):
        book.apply(*entry_record(ListEntry("snooze.large", "ACC1", "ana", "", T0, T0 + 31 * 86_400_000)))
    assert "snooze.large" not in book.entries


def test_a_definition_in_the_lists_topic_is_refused_unless_a_tombstone_of_its_key_follows() -> None:
    """The lists topic of an earlier version: its definitions are refused (the running lists unchanged), but one that
    ``lists migrate`` removed since is not, as compaction would have it: only the last record of a key counts."""
    refused: list[tuple[int, str]] = []
    live = LiveLists(None, lambda record, reason: refused.append((record.offset, reason)), ListBook(Clock()),
                     definitions="defs")
    old = json.dumps({"name": "mules", "field": "TO", "level": "watch"}).encode()
    for offset, (key, value) in enumerate([(b"mules", old), (b"gone", old), (b"gone", None)]):
        live.apply(Record("lists", 0, offset, key, value))
    live.apply(Record("defs", 0, 0, *list_record(BLOCK)))
    live.refuse_misplaced()
    assert [offset for offset, _ in refused] == [0] and "lists migrate" in refused[0][1]
    assert live.book.specs == {"mules": BLOCK}
