"""A rule change through a proposal, on the real cluster: its evidence against two independent backtests of the same
records, four eyes, publication, staleness, rollback, an emergency publish and the audit trail in order."""

from __future__ import annotations

import json
import os
import re
import subprocess
from itertools import islice
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from fraud_pipeline.backtest import generated
from fraud_pipeline.cases import Label
from fraud_pipeline.payment import encode
from fraud_pipeline.rules import load_ruleset, parse_rule
from fraud_pipeline.scenarios import FRAUD
from tests.decisions import expected
from tests.integration.conftest import ROOT, Pipeline, kafka_python_connection, read_topic

RECOMMENDED = ROOT / "fraud_pipeline" / "rules" / "sets" / "recommended.yaml"
COUNT = int(os.environ.get("PROPOSAL_TEST_PAYMENTS", "10000"))
"""The payments replayed (PROPOSAL_TEST_PAYMENTS=100000 for a bank's day's worth at a small scale)."""
LABEL_EVERY = 7
"""Every 7th payment gets an analyst's label (its scenario's), the others none."""
PROPOSED_ID = re.compile(r"^proposal (P-\S+) by ", re.M)


def send_history(pipeline: Pipeline) -> dict[str, str]:
    """COUNT seeded scenario payments keyed by account, and a label for every LABEL_EVERY-th; the labels by payment id."""
    producer = KafkaProducer(**kafka_python_connection(pipeline.bootstrap), acks="all")
    labels: dict[str, str] = {}
    try:
        for n, example in enumerate(islice(generated(COUNT, 5, "default", 20, 2000), COUNT)):
            payment = example.payment
            producer.send(pipeline.topics.payments, key=(payment.account or "").encode(), value=encode(payment))
            if n % LABEL_EVERY == 0 and payment.payment_id:
                labels[payment.payment_id] = example.label
                key, value = Label(payment.payment_id, example.label, "ana", 1_700_000_000_000 + n).to_record()
                producer.send(pipeline.topics.labels, key=key, value=value)
        producer.flush()
    finally:
        producer.close()
    return labels


def rule_file(tmp_path: Path, name: str, rule_id: str, change: dict[str, Any]) -> Path:
    """The recommended set's ``rule_id``, changed and at its next version, alone in a file."""
    rule = load_ruleset(RECOMMENDED).get(rule_id)
    assert rule is not None and rule.source is not None
    data = dict(rule.source) | change | {"version": rule.version + 1}
    parse_rule(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def proposals(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """The proposals topic's last record of each id."""
    return {json.loads(r.value)["id"]: json.loads(r.value) for r in read_topic(pipeline.bootstrap, pipeline.topics.proposals)}


def test_a_proposal_replays_the_history_and_needs_a_second_admin(pipeline: Pipeline, tmp_path: Path,
                                                                  figures: list[dict[str, Any]]) -> None:
    labels = send_history(pipeline)
    baseline = ("--rules", str(RECOMMENDED))
    stricter = rule_file(tmp_path, "burst.json", "burst", {"aggregate": {
        "function": "count", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 4}})
    proposed = pipeline.run("fraud_rules", "propose", str(stricter), "--note", "burst from 5 to 4", "--by", "ana", *baseline)
    match = PROPOSED_ID.search(proposed.stdout)
    assert match, proposed.stdout
    first = match.group(1)
    assert "changed burst: burst@1 (enabled, weight 1) -> burst@2 (enabled, weight 1)" in proposed.stdout, proposed.stdout
    assert f"evidence of {first} ready: {COUNT:,} payments" in proposed.stdout, proposed.stdout

    # The evidence's figures are those of two independent backtests of the same records.
    live = load_ruleset(RECOMMENDED)
    after = live.with_rule(parse_rule(json.loads(stricter.read_text())))
    before_decisions = expected(pipeline.bootstrap, pipeline.topics.payments, live, 6)
    after_decisions = expected(pipeline.bootstrap, pipeline.topics.payments, after, 6)
    assert len(before_decisions) == len(after_decisions) == COUNT
    kept = proposals(pipeline)[first]
    evidence = kept["evidence"]
    assert kept["evidence_base"] == live.version and kept["base"] == live.version
    for side, decisions in (("live", before_decisions), ("proposed", after_decisions)):
        outcomes = {o: sum(1 for outcome, _, _ in decisions.values() if outcome == o) for o in ("approve", "review", "decline")}
        assert evidence[side]["outcomes"] == outcomes, side
        alerts = [pid for pid, (outcome, _, _) in decisions.items() if pid in labels and outcome != "approve"]
        assert evidence[side]["labelled_alerts"] == len(alerts), side
        assert evidence[side]["labelled_true_alerts"] == sum(labels[pid] == FRAUD for pid in alerts), side
    changed = {pid for pid in before_decisions if before_decisions[pid][0] != after_decisions[pid][0]}
    assert changed, "the stricter burst rule changes no decision: the test shows nothing"
    assert evidence["changed"] == len(changed)
    assert evidence["alerts_added"] == sum(before_decisions[pid][0] == "approve" for pid in changed)
    assert evidence["labelled"] == len(labels)
    assert [s["payment_id"] for s in evidence["sample"]] and {s["payment_id"] for s in evidence["sample"]} <= changed
    figures.append(dict(test=f"proposal evidence ({pipeline.client})", payments=COUNT, labelled=len(labels),
                        evidence_s=kept["evidence_span"]["seconds"], changed=len(changed),
                        alerts_added=evidence["alerts_added"], alerts_removed=evidence["alerts_removed"],
                        precision=(evidence["live"]["precision"], evidence["proposed"]["precision"])))

    # A second proposal, on another rule, evidence run while the first is still open.
    larger = rule_file(tmp_path, "large.json", "new-payee-large", {"weight": 0.5})
    other = PROPOSED_ID.search(pipeline.run("fraud_rules", "propose", str(larger), "--note", "half weight", "--by", "bo",
                                            *baseline).stdout)
    assert other
    second = other.group(1)

    # Four eyes: the proposer's own approval is refused; another admin's publishes it.
    done = subprocess.run(pipeline.command("fraud_rules", "approve", first, "--note", "mine", "--by", "ana", *baseline),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "another admin must approve it (four eyes)" in done.stderr, done.stderr
    approved = pipeline.run("fraud_rules", "approve", first, "--note", "fewer card tests missed", "--by", "bo", *baseline)
    assert f"{first} approved by bo; published burst@2" in approved.stdout, approved.stdout
    listed = pipeline.run("fraud_rules", "list", *baseline).stdout
    assert "| burst | 2 | enabled |" in listed, listed

    # The live set changed: the second proposal's evidence is stale, and it cannot be approved until run again.
    table = pipeline.run("fraud_rules", "proposals", *baseline).stdout
    assert f"| {first} | approved | ana |" in table and f"| {second} | stale | bo |" in table, table
    stale = subprocess.run(pipeline.command("fraud_rules", "approve", second, "--note", "ok", "--by", "ana", *baseline),
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert stale.returncode == 2 and "the live rules changed since its evidence" in stale.stderr, stale.stderr
    pipeline.run("fraud_rules", "evidence", second, "--by", "bo", *baseline)
    assert f"| {second} | ready | bo |" in pipeline.run("fraud_rules", "proposals", *baseline).stdout
    pipeline.run("fraud_rules", "reject", second, "--note", "not now", "--by", "ana", *baseline)

    # Rolled back in one step: the rule it replaced, as it was.
    back = pipeline.run("fraud_rules", "rollback", first, "--note", "too many declines", "--by", "cy", *baseline).stdout
    assert f"{first} rolled back by cy: published burst@1 again" in back, back
    assert "| burst | 1 | enabled |" in pipeline.run("fraud_rules", "list", *baseline).stdout
    assert f"| {first} | rolled back | ana |" in pipeline.run("fraud_rules", "proposals", *baseline).stdout

    # An emergency publish: live at once, recorded unreviewed until another admin acknowledges it.
    urgent = pipeline.run("fraud_rules", "publish", str(larger), "--reason", "a mule ring now", "--by", "dee",
                          *baseline).stdout
    found = re.search(r"recorded as emergency change (E-\S+), unreviewed", urgent)
    assert found and "published new-payee-large@2 (enabled)" in urgent, urgent
    emergency = found.group(1)
    assert f"| {emergency} | unreviewed | dee |" in pipeline.run("fraud_rules", "proposals", *baseline).stdout
    own = subprocess.run(pipeline.command("fraud_rules", "acknowledge", emergency, "--note", "fine", "--by", "dee", *baseline),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert own.returncode == 2 and "another admin must acknowledge it" in own.stderr, own.stderr
    pipeline.run("fraud_rules", "acknowledge", emergency, "--note", "checked the ring's payees", "--by", "eve", *baseline)
    assert f"| {emergency} | acknowledged | dee |" in pipeline.run("fraud_rules", "proposals", *baseline).stdout

    # Every step in the audit topic, in order.
    steps = [(e["action"], e["target"], e["user"]) for e in (json.loads(r.value) for r in read_topic(
        pipeline.bootstrap, pipeline.topics.audit))]
    assert steps == [("rule-propose", first, "ana"), ("rule-evidence", first, "ana"), ("rule-propose", second, "bo"),
                     ("rule-evidence", second, "bo"), ("rule-approve", first, "bo"), ("rule-evidence", second, "bo"),
                     ("rule-reject", second, "ana"), ("rule-rollback", first, "cy"), ("rule-emergency", emergency, "dee"),
                     ("rule-acknowledge", emergency, "eve")], steps
