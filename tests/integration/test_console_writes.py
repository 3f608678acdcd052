"""The console's writes on the real cluster: each change with its audit record, or neither (once per client).

The finding this answers: a list entry was written, then its audit record, which could fail after the block was live
(a 400 KB reason made a 1.2 MB audit record, over the topic's limit). The console's API now caps reasons, so the
test calls the console's case work directly with such a reason: its audit record cannot be written, and neither
the list entry nor the audit record reaches a reader (every reader reads committed records only).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.console.casework import CaseError, CaseWork
from fraud_pipeline.errors import PipelineError
from fraud_pipeline.rules.lists import entry_key
from tests.integration.conftest import Pipeline, read_topic
from tests.integration.test_lists import REVIEW_RULES
from tests.integration.test_rules import payment, send

pytestmark = pytest.mark.integration


def test_a_list_entry_whose_audit_record_cannot_be_written_is_not_written_either(pipeline: Pipeline) -> None:
    pipeline.run("fraud_rules", "lists", "create", "mules", "--field", "TO", "--level", "block")
    settings = Settings(ConnectionSettings(tuple(pipeline.bootstrap.split(",")), pipeline.client), pipeline.topics)
    cases = CaseWork(settings, lambda: "test", transactional_id=f"fraud-console-test-{pipeline.suffix}")
    stop = threading.Event()
    reader = threading.Thread(target=cases.run, args=(stop,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "mules" not in cases.book.specs:
            assert time.monotonic() < deadline, f"the console never read the list: {cases.error}"
            time.sleep(0.2)

        with pytest.raises(PipelineError, match="nothing of it was written"):
            cases.add_to_list("ada", "mules", "PAYEE-HUGE", None, "x" * 1_200_000)
        assert "PAYEE-HUGE" not in cases.book.entries.get("mules", {})

        cases.add_to_list("ada", "mules", "PAYEE-OK", None, "known mule")  # the console writes on afterwards
    finally:
        stop.set()
        reader.join(30)
    entries = {record.key for record in read_topic(pipeline.bootstrap, pipeline.topics.lists)}
    assert entry_key("mules", "PAYEE-HUGE") not in entries
    assert entry_key("mules", "PAYEE-OK") in entries
    audit = [json.loads(record.value) for record in read_topic(pipeline.bootstrap, pipeline.topics.audit)]
    assert [(a["action"], a["target"]) for a in audit] == [("list-add", "mules/PAYEE-OK")]


def console_case_work(pipeline: Pipeline, name: str) -> tuple[CaseWork, threading.Event, threading.Thread]:
    """A console's case work (its own transactional id, as a console on another host has), reading."""
    settings = Settings(ConnectionSettings(tuple(pipeline.bootstrap.split(",")), pipeline.client), pipeline.topics)
    cases = CaseWork(settings, lambda: "test", transactional_id=f"fraud-console-{name}-{pipeline.suffix}")
    stop = threading.Event()
    reader = threading.Thread(target=cases.run, args=(stop,), daemon=True)
    reader.start()
    return cases, stop, reader


def wait_for_cases(cases: CaseWork, ids: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ids <= {row["id"] for row in cases.queue()["open"]}:
        assert time.monotonic() < deadline, f"the cases {ids} never showed: {cases.error}"
        time.sleep(0.2)


def test_two_consoles_agree_on_who_holds_a_case_and_a_restart_keeps_the_claim(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path,
) -> None:
    rules = tmp_path / "review.yaml"
    rules.write_text(REVIEW_RULES)
    pipeline.start("fraud_detector", "--rules", str(rules), "--quiet", "--state-dir", str(tmp_path / "state"), group="detector")
    held = [payment(f"ACC-K{n}", amount=600 + n, to="landlord") for n in range(2)]
    send(raw_producer, pipeline.topics.payments, held)
    first, second = (p.payment_id or "" for p in held)
    a, stop_a, reader_a = console_case_work(pipeline, "a")
    b, stop_b, reader_b = console_case_work(pipeline, "b")
    try:
        wait_for_cases(a, {first, second})
        wait_for_cases(b, {first, second})

        assert a.claim(first, "ana") == {"ok": True, "claim": "ana"}
        with pytest.raises(CaseError, match="claimed by ana") as refused:
            b.claim(first, "bob")  # whether or not b had read ana's claim before it tried
        assert refused.value.status == 409
        with pytest.raises(CaseError, match="claim the case before resolving it"):
            b.resolve(first, "bob", "legit", "")

        # Both at once on the other case: one wins, and both consoles name the same holder.
        outcomes: dict[str, object] = {}

        def try_claim(cases: CaseWork, user: str) -> None:
            try:
                outcomes[user] = cases.claim(second, user)
            except CaseError as exc:
                outcomes[user] = exc.status

        racers = [threading.Thread(target=try_claim, args=(a, "ana")), threading.Thread(target=try_claim, args=(b, "bob"))]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        winners = [user for user, outcome in outcomes.items() if outcome == {"ok": True, "claim": user}]
        assert len(winners) == 1 and sorted(map(str, outcomes.values())).count("409") == 1, outcomes
        winner = winners[0]
        assert a.case(second)["claim"]["user"] == b.case(second)["claim"]["user"] == winner

        # ana's console restarts: the claim is still hers, on both.
        stop_a.set()
        reader_a.join(30)
        a, stop_a, reader_a = console_case_work(pipeline, "a")
        wait_for_cases(a, {first})
        deadline = time.monotonic() + 30
        while (a.case(first)["claim"] or {}).get("user") != "ana":
            assert time.monotonic() < deadline, "the restarted console lost the claim"
            time.sleep(0.2)
        a.resolve(first, "ana", "fraud", "stolen card")
        deadline = time.monotonic() + 30
        while first in {row["id"] for row in b.queue()["open"]}:
            assert time.monotonic() < deadline, "the other console never saw the resolution"
            time.sleep(0.2)
        with pytest.raises(CaseError, match="resolved"):
            b.claim(first, "bob")
    finally:
        for stop, reader in ((stop_a, reader_a), (stop_b, reader_b)):
            stop.set()
            reader.join(30)
    labels = [json.loads(record.value) for record in read_topic(pipeline.bootstrap, pipeline.topics.labels)]
    assert [(label["payment_id"], label["analyst"]) for label in labels] == [(first, "ana")]
