"""The evidence of a rule change: the live and the proposed set over the same payments, by hand-counted figures."""

from __future__ import annotations

import pytest

from fraud_pipeline.backtest import Example
from fraud_pipeline.evidence import evidence, rule_changes
from fraud_pipeline.payment import Payment
from fraud_pipeline.rules import parse_ruleset

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z

LIVE = {"threshold": 1, "rules": [
    {"id": "big", "when": {"field": "AMOUNT", "op": ">=", "value": 500}},
    {"id": "btc", "mode": "shadow", "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}},
]}
PROPOSED = {"threshold": 1, "rules": [
    {"id": "big", "version": 2, "when": {"field": "AMOUNT", "op": ">=", "value": 700}},
    {"id": "btc", "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}},
]}
# (label, type, amount, account): live declines AMOUNT >= 500 (btc in shadow), proposed AMOUNT >= 700 or BITCOIN
DATA = [
    ("fraud", "VISA", 900, "A"),  # p0: declined by both
    ("fraud", "VISA", 600, "A"),  # p1: declined -> approved (an alert removed)
    ("fraud", "BITCOIN", 50, "B"),  # p2: approved -> declined (an alert added)
    ("fraud", "BITCOIN", 700, "B"),  # p3: declined by both (score 2 under the proposed set)
    ("legit", "VISA", 800, "C"),  # p4: declined by both
    ("legit", "VISA", 999, "C"),  # p5: declined by both
    ("legit", "BITCOIN", 10, "C"),  # p6: approved -> declined: a decline added on a legit payment
    ("legit", "VISA", 20, "D"),  # p7: approved by both, unlabelled
    ("legit", "MASTERCARD", 30, "D"),  # p8: approved by both, unlabelled
]


def examples() -> list[Example]:
    return [Example(Payment("01/01/2024", "09:00:00", kind, amount, "me", f"p{i}", account, T0 + i), label, "s", T0 + i)
            for i, (label, kind, amount, account) in enumerate(DATA)]


LABELS = {f"p{i}": label for i, (label, *_) in enumerate(DATA[:7])}
"""The labels topic's verdicts: p7 and p8 unlabelled."""


def test_both_sets_over_the_same_payments_hand_counted() -> None:
    found = evidence(examples(), parse_ruleset(LIVE), parse_ruleset(PROPOSED), LABELS, k=4)
    assert (found.payments, found.labelled, found.changed) == (9, 7, 3)
    assert (found.alerts_added, found.alerts_removed, found.declines_added_on_legit) == (2, 1, 1)
    assert dict(found.live.outcomes) == {"approve": 4, "decline": 5}
    assert dict(found.proposed.outcomes) == {"approve": 3, "decline": 6}
    assert dict(found.live.rules) == {"big": 5, "btc": 3}  # the shadow rule's firings counted too
    assert dict(found.proposed.rules) == {"big": 4, "btc": 3}
    assert (found.live.labelled_alerts, found.live.labelled_true_alerts, found.live.precision) == (5, 3, pytest.approx(0.6))
    assert (found.proposed.labelled_alerts, found.proposed.labelled_true_alerts, found.proposed.precision) == (6, 3, 0.5)
    # Precision@4: live p0, p1, p3, p4 (ties in order); proposed p3 (score 2), p0, p2, p4
    assert (found.live.precision_at(4), found.proposed.precision_at(4)) == (0.75, 0.75)
    assert found.live.precision_at(2) == 1.0
    assert dict(found.accounts) == {"A": 1, "B": 1, "C": 1}
    assert [(c.payment_id, c.live, c.proposed) for c in found.sample] == [
        ("p1", "decline", "approve"), ("p2", "approve", "decline"), ("p6", "approve", "decline")]
    assert found.sample[0].live_reasons[0].startswith("big@1: ") and found.sample[0].proposed_reasons == ()
    assert found.sample[1].live_reasons[0].startswith("btc@1 [shadow]: ")
    assert found.sample[1].proposed_reasons[0].startswith("btc@1: ")
    assert found.review_per_day == {}
    data = found.to_dict()
    assert data["live"]["outcomes"] == {"approve": 4, "review": 0, "decline": 5}
    assert data["accounts"] == [["A", 1], ["B", 1], ["C", 1]]


def test_without_the_labels_topic_the_examples_own_labels_count() -> None:
    found = evidence(examples(), parse_ruleset(LIVE), parse_ruleset(PROPOSED))
    assert found.labelled == 9
    assert (found.live.labelled_alerts, found.live.labelled_true_alerts) == (5, 3)


def test_payments_before_the_window_fill_the_windows_and_are_not_reported() -> None:
    rules = {"threshold": 1, "rules": [{"id": "burst", "aggregate": {
        "function": "count", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 2}}]}
    stricter = {"threshold": 1, "rules": [{"id": "burst", "version": 2, "aggregate": {
        "function": "count", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 1}}]}
    same = [Example(Payment("01/01/2024", "09:00:00", "VISA", 5, "me", f"p{i}", "A", T0 + 1000 * i), "legit", "s",
                    T0 + 1000 * i) for i in range(3)]
    whole = evidence(same, parse_ruleset(rules), parse_ruleset(stricter))
    assert (whole.payments, whole.changed) == (3, 1)  # the second payment: 2 > 1, not > 2; the third: both
    window = evidence(same, parse_ruleset(rules), parse_ruleset(stricter), since_ms=T0 + 2000)
    # only the third reported, decided with the two before it in its window: declined by both
    assert (window.payments, window.changed, dict(window.live.outcomes)) == (1, 0, {"decline": 1})


def test_the_review_queue_per_day() -> None:
    held = {"threshold": 2, "review_threshold": 1, "rules": LIVE["rules"]}
    found = evidence(examples(), parse_ruleset(held), parse_ruleset(LIVE))
    assert found.review_per_day == {"2024-01-01": (5, 0)}
    assert (found.changed, found.alerts_added, found.alerts_removed) == (5, 0, 0)  # review -> decline: still an alert


def test_rule_changes_name_each_rule_added_removed_or_changed_and_the_thresholds() -> None:
    assert [c.to_dict() for c in rule_changes(parse_ruleset(LIVE), parse_ruleset(PROPOSED))] == [
        {"id": "big", "change": "changed", "live": "big@1 (enabled, weight 1)", "proposed": "big@2 (enabled, weight 1)"},
        {"id": "btc", "change": "changed", "live": "btc@1 (shadow, weight 1)", "proposed": "btc@1 (enabled, weight 1)"},
    ]
    other = {"threshold": 2, "rules": [LIVE["rules"][0], {"id": "new", "when": {"field": "TO", "op": "==", "value": "stranger"}}]}
    assert [(c.id, c.change, c.live, c.proposed) for c in rule_changes(parse_ruleset(LIVE), parse_ruleset(other))] == [
        ("threshold", "changed", "1", "2"),
        ("new", "added", None, "new@1 (enabled, weight 1)"),
        ("btc", "removed", "btc@1 (shadow, weight 1)", None),
    ]
    assert rule_changes(parse_ruleset(LIVE), parse_ruleset(LIVE)) == []
