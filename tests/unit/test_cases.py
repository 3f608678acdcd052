"""Labels, the audit trail, precision per rule version and Precision@k; the console's accounts and sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fraud_pipeline.backtest import Example, Skipped, relabelled
from fraud_pipeline.cases import AuditEvent, Label, RecordError, latest_labels, precision_at_k, precision_by_rule
from fraud_pipeline.console.accounts import (
    Sessions,
    authenticate,
    hash_password,
    load_users,
    save_user,
    verify_password,
)
from fraud_pipeline.errors import ConfigError
from fraud_pipeline.payment import Payment
from fraud_pipeline.rules import ORIGINAL, parse_ruleset

T0 = 1_764_000_000_000


def test_the_label_record_format() -> None:
    label = Label("p-1", "fraud", "ana", T0, "card reported stolen", 0.5, "review", ("large@1", "bitcoin@1"), "3f2a9c1b")
    key, value = label.to_record()
    assert key == b"p-1"
    assert json.loads(value) == {"payment_id": "p-1", "verdict": "fraud", "analyst": "ana", "at_ms": T0,
                                 "note": "card reported stolen", "score": 0.5, "outcome": "review",
                                 "rules": ["large@1", "bitcoin@1"], "ruleset": "3f2a9c1b"}
    assert Label.from_record(key, value) == label
    assert Label.from_record(None, json.dumps({"payment_id": "p", "verdict": "legit", "analyst": "a", "at_ms": 1}).encode()
                             ) == Label("p", "legit", "a", 1)


@pytest.mark.parametrize(("key", "value", "message"), [
    (b"p", b"nope", "not JSON"),
    (b"p", b"[]", "JSON object"),
    (b"p", json.dumps({"payment_id": "p", "verdict": "maybe", "analyst": "a", "at_ms": 1}).encode(), "verdict"),
    (b"p", json.dumps({"payment_id": "p", "verdict": "fraud", "analyst": "", "at_ms": 1}).encode(), "analyst"),
    (b"p", json.dumps({"payment_id": "p", "verdict": "fraud", "analyst": "a", "at_ms": "now"}).encode(), "at_ms"),
    (b"p", json.dumps({"payment_id": "p", "verdict": "fraud", "analyst": "a", "at_ms": 1, "rules": "x"}).encode(), "rules"),
    (b"q", json.dumps({"payment_id": "p", "verdict": "fraud", "analyst": "a", "at_ms": 1}).encode(), "not its payment id"),
])
def test_unreadable_labels_are_refused(key: bytes, value: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        Label.from_record(key, value)


def test_the_audit_record_format() -> None:
    event = AuditEvent(T0, "ada", "list-add", "mules/PAYEE-7", {"level": "block", "expires_ms": None})
    key, value = event.to_record()
    assert key == b"ada"
    assert json.loads(value) == {"at_ms": T0, "user": "ada", "action": "list-add", "target": "mules/PAYEE-7",
                                 "detail": {"level": "block", "expires_ms": None}}
    assert AuditEvent.from_record(value) == event
    with pytest.raises(RecordError, match="action"):
        AuditEvent.from_record(json.dumps({"at_ms": 1, "user": "a", "action": "dance"}).encode())


def test_precision_per_rule_version_from_the_latest_labels() -> None:
    labels = latest_labels([
        Label("p1", "legit", "ana", 1, rules=("large@1",)),
        Label("p1", "fraud", "bob", 2, rules=("large@1",)),  # a later label of p1 replaces the first
        Label("p2", "legit", "ana", 3, rules=("large@1", "bitcoin@1")),
        Label("p3", "fraud", "ana", 4, rules=("large@2",)),
        Label("p4", "fraud", "ana", 5),
    ])
    found = {p.rule: (p.labelled, p.fraud, p.precision) for p in precision_by_rule(labels.values())}
    assert found == {"bitcoin@1": (1, 0, 0.0), "large@1": (2, 1, 0.5), "large@2": (1, 1, 1.0)}


def test_precision_at_k() -> None:
    scored = [(0.5, False), (2.0, True), (1.0, True), (1.0, False), (3.0, False)]
    assert precision_at_k(scored, 1) == 0.0  # the top score was a false alert
    assert precision_at_k(scored, 2) == 0.5
    assert precision_at_k(scored, 3) == pytest.approx(2 / 3)  # ties keep their order: (1.0, True) first
    assert precision_at_k(scored, 4) == 0.5
    assert precision_at_k(scored, 100) == 0.4  # fewer than k: over those there are
    assert precision_at_k([], 10) is None
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(scored, 0)


def test_the_backtest_relabels_by_the_labels_topic_and_counts_the_unlabelled() -> None:
    def example(pid: str, label: str) -> Example:
        return Example(Payment("01/22/2023", "11:50:50", "VISA", 5, "me", pid), label, "s", T0)

    skipped = Skipped()
    out = list(relabelled([example("a", "fraud"), example("b", "legit"), example("c", "legit")],
                          {"a": "legit", "b": "fraud"}, skipped))
    assert [(e.payment.payment_id, e.label) for e in out] == [("a", "legit"), ("b", "fraud")]
    assert skipped.counts == {"unlabelled": 1}


def test_a_rule_set_version_names_its_content() -> None:
    assert len(ORIGINAL.version) == 8 and ORIGINAL.version == parse_ruleset(ORIGINAL.to_dict()).version
    assert parse_ruleset({**ORIGINAL.to_dict(), "threshold": 2}).version != ORIGINAL.version


def test_passwords_are_salted_hashes() -> None:
    one, two = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert one != two and one.startswith("scrypt$") and "correct" not in one
    assert verify_password("correct horse battery", one) and not verify_password("correct horse batterY", one)
    assert not verify_password("x", "md5$abc") and not verify_password("x", "garbage")


def test_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    assert load_users(path) == {}
    assert save_user(path, "ana", "analyst", "correct horse battery")
    assert not save_user(path, "ana", "admin", "another long password")  # changed, not added
    users = load_users(path)
    assert users["ana"].role == "admin" and users["ana"].may("analyst") and users["ana"].may("viewer")
    assert oct(path.stat().st_mode & 0o777) == "0o600" and "another" not in path.read_text()
    assert authenticate(users, "ana", "another long password") is users["ana"]
    assert authenticate(users, "ana", "correct horse battery") is None
    assert authenticate(users, "nobody", "another long password") is None
    with pytest.raises(ConfigError, match="at least 12"):
        save_user(path, "bob", "analyst", "short")
    with pytest.raises(ConfigError, match="role"):
        save_user(path, "bob", "boss", "long enough password")
    with pytest.raises(ConfigError, match="user name"):
        save_user(path, "bob smith", "viewer", "long enough password")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the users file"):
        load_users(path)


def test_sessions_end_when_idle_or_signed_out(tmp_path: Path) -> None:
    save_user(tmp_path / "u.json", "vic", "viewer", "correct horse battery")
    user = load_users(tmp_path / "u.json")["vic"]
    assert not user.may("analyst")
    sessions = Sessions(idle_s=60)
    session = sessions.start(user)
    assert sessions.get(session.token) is session and session.csrf != session.token
    sessions.end(session.token)
    assert sessions.get(session.token) is None and sessions.get(None) is None
    idle = Sessions(idle_s=0)
    stale = idle.start(user)
    assert idle.get(stale.token) is None


def test_claims_decided_by_the_topics_order_whoever_reads_them() -> None:
    """Every console applies the claims topic's records in order with one rule: the first live claim holds."""
    from fraud_pipeline.claims import CLAIM, RELEASE, ClaimBook, ClaimRecord

    records = [ClaimRecord("p1", "ana", CLAIM, 1_000, "a1"), ClaimRecord("p1", "bob", CLAIM, 1_500, "b1"),
               ClaimRecord("p1", "bob", RELEASE, 1_600, "b2"), ClaimRecord("p1", "ana", CLAIM, 2_000, "a2"),
               ClaimRecord("p2", "bob", CLAIM, 2_000, "b3"), ClaimRecord("p1", "bob", CLAIM, 2_000 + 1_800_001, "b4")]
    books = [ClaimBook(), ClaimBook()]
    for book in books:
        took = [book.apply(ClaimRecord.from_record(*record.to_record())) for record in records]
        # bob's claim and release of ana's case change nothing; ana renews; bob takes p1 once ana's claim lapsed
        assert took == [True, False, False, True, True, True]
    assert books[0].holder("p1", 1_802_002) == books[1].holder("p1", 1_802_002) == ("bob", 1_802_001)
    assert books[0].holder("p2", 2_000 + 1_800_001) is None  # lapsed after 30 minutes
