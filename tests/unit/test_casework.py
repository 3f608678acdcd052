"""The case queue's rules without Kafka: one resolution per case, lists and snoozes checked before anything is
written, and records that cannot be read left out without stopping the reader."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fraud_pipeline.claims import ClaimRecord
from fraud_pipeline.clients import Record
from fraud_pipeline.config import Settings
from fraud_pipeline.console import casework
from fraud_pipeline.console.casework import CaseError, CaseWork, Change
from fraud_pipeline.rules.lists import ListSpec, list_record

FRAUD = Settings().topics.fraud


class Recorded(CaseWork):
    """A CaseWork whose writes are recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(Settings(), lambda: "3f2a9c1b")
        self.written: list[tuple[str, bytes, bytes | None]] = []

    def _commit(self, change: Change) -> None:
        """Recorded, and read back at once: its list records into the book, its claims into the claims."""
        self.written.extend(change.records)
        with self._lock:
            for key, value in change.listed:
                self.book.apply(key, value)
            for topic, key, value in change.records:
                if topic == self._settings.topics.claims:
                    self._claims.apply(ClaimRecord.from_record(key, value))

    def actions(self) -> list[str]:
        return [json.loads(v or b"")["action"] for t, _, v in self.written if t == self._settings.topics.audit]


def held(work: CaseWork, payment_id: str = "p-1", account: Any = "ACC1") -> None:
    value = {"PAYMENT_ID": payment_id, "ACCOUNT": account, "AMOUNT": 600, "TO": "shop", "PAYMENT_TYPE": "VISA",
             "DECISION": {"fraud": False, "outcome": "review", "score": 0.5, "threshold": 1, "review_threshold": 0.5,
                          "rules": [{"id": "large", "version": 1, "mode": "enabled", "weight": 0.5, "reason": "AMOUNT=600 >= 500"}]}}
    work._safely(work._take_routed, Record(FRAUD, 0, 0, b"k", json.dumps(value).encode(), (), 1))


def test_a_case_is_resolved_once_and_only_by_its_holder() -> None:
    work = Recorded()
    held(work)
    with pytest.raises(CaseError, match="claim the case"):
        work.resolve("p-1", "ana", "fraud", "")
    work.claim("p-1", "ana")
    with pytest.raises(CaseError, match="claimed by ana"):
        work.claim("p-1", "bob")
    label = work.resolve("p-1", "ana", "fraud", "stolen card")
    assert (label.rules, label.score, label.ruleset) == (("large@1",), 0.5, "3f2a9c1b")
    with pytest.raises(CaseError, match="resolved"):
        work.resolve("p-1", "ana", "legit", "")
    with pytest.raises(CaseError, match="resolved"):
        work.claim("p-1", "ana")
    assert [t for t, _, _ in work.written].count(work._settings.topics.labels) == 1
    assert work.actions() == ["claim", "resolve"]
    assert work.queue()["resolved"][0]["label"]["analyst"] == "ana"


def test_lists_and_snoozes_are_checked_before_the_label_is_written() -> None:
    work = Recorded()
    held(work)
    work.claim("p-1", "ana")
    with pytest.raises(CaseError, match="no list 'nope'"):
        work.resolve("p-1", "ana", "fraud", "", add_to_list=("nope", "shop", None))
    with pytest.raises(CaseError, match="only on a case resolved as legit"):
        work.resolve("p-1", "ana", "fraud", "", snooze=("large", 3600))
    with pytest.raises(CaseError, match="did not count"):
        work.resolve("p-1", "ana", "legit", "", snooze=("bitcoin", 3600))
    with pytest.raises(CaseError, match="at most 30 days"):
        work.resolve("p-1", "ana", "legit", "", snooze=("large", 31 * 86400))
    topics = work._settings.topics
    assert [topic for topic, _, _ in work.written] == [topics.claims, topics.audit]  # the claim and its audit alone
    work.resolve("p-1", "ana", "legit", "rent", snooze=("large", 3600))
    assert work.actions() == ["claim", "resolve", "snooze"]
    assert work.book.specs["snooze.large"].rule == "large" and "ACC1" in work.book.entries["snooze.large"]
    # a snooze list takes no entry from the list view: a snooze is made from a case
    with pytest.raises(CaseError, match="snooze list"):
        work.add_to_list("ada", "snooze.large", "ACC2", 3600, "")
    work.book.define(*list_record(ListSpec("mules", "TO", "block")))
    with pytest.raises(CaseError, match=r"entry\.value"):
        work.add_to_list("ada", "mules", "x" * 300, None, "")
    entry = work.add_to_list("ada", "mules", "PAYEE-7", 10, "chargeback")
    assert entry.expires_ms is not None and entry.expires_ms - entry.added_ms == 10_000
    assert work.actions()[-1] == "list-add"


def test_records_that_cannot_be_read_are_left_out_and_the_reader_goes_on() -> None:
    work = Recorded()
    labels = work._settings.topics.labels
    for value in (b'{"payment_id": "p", "verdict": "fraud", "analyst": "a", "at_ms": 1, "score": 1' + b"0" * 400 + b"}",
                  b'{"payment_id": "\\ud800", "verdict": "fraud", "analyst": "a", "at_ms": 1}', b"\xff"):
        work._safely(work._take_topic_record, Record(labels, 0, 0, b"p", value), None)
    work._safely(work._take_routed, Record(FRAUD, 0, 1, b"k", b"not json"))
    held(work, "p-2", account={"nested": True})
    assert work.labels() == [] and [c["id"] for c in work.queue()["open"]] == ["p-2"]


def test_cases_older_than_the_span_read_are_forgotten() -> None:
    work = Recorded()
    held(work, "p-old")
    held(work, "p-new")
    work._cases["p-old"]["timestamp_ms"] = 1_000
    work._cases["p-new"]["timestamp_ms"] = 8 * 86_400_000
    work.prune(8 * 86_400_000 + 1)  # 7 days read: p-old is 8 days old
    assert [row["id"] for row in work.queue()["open"]] == ["p-new"]


def test_cases_and_histories_stay_within_their_bytes_whatever_the_records_weigh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past CASE_BYTES the oldest cases are forgotten (counted for the page); past HISTORY_BYTES the least recently
    seen accounts' histories go; what is kept is accounted to the byte, and big records count as big."""
    monkeypatch.setattr(casework, "CASE_BYTES", 200_000)
    monkeypatch.setattr(casework, "HISTORY_BYTES", 500_000)
    work = CaseWork(Settings(), lambda: "v1")
    for n in range(400):
        note = "x" * (50 if n % 2 else 5_000)  # light and heavy records, one account in three repeating
        value = {"PAYMENT_ID": f"p-{n}", "ACCOUNT": f"ACC{n % 150}", "AMOUNT": 600, "TO": note, "PAYMENT_TYPE": "VISA",
                 "DECISION": {"outcome": "review", "score": 0.5}}
        work._take_routed(Record(FRAUD, 0, n, b"k", json.dumps(value).encode(), (("decision", b"review"),), n))
    kept = work._cases
    assert work._case_bytes == sum(work._case_sizes.values()) <= 200_000
    assert list(kept) == [f"p-{n}" for n in range(400 - len(kept), 400)]  # the newest, in order
    assert work.cases_forgotten == 400 - len(kept) > 0 and work.queue()["forgotten"] == work.cases_forgotten
    assert work._history_bytes == sum(h["bytes"] for entries in work._history.values() for h in entries) <= 500_000
    assert "ACC100" not in work._history and "ACC0" in work._history  # last seen at 250 and 300: the first went
    held(work, "p-400", "ACC0")
    history = work.case("p-400")["history"]
    assert [h["payment"]["PAYMENT_ID"] for h in history][:1] == ["p-300"] and "bytes" not in history[0]
    work.prune(now_ms=10**15)  # everything older than the span read: nothing kept, nothing accounted
    assert not work._cases and work._case_bytes == 0
