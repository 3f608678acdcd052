"""A rule change proposal's steps: four eyes, staleness, its record; the commands' arguments."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fraud_pipeline.proposals import (
    ACKNOWLEDGED,
    APPROVED,
    READY,
    REJECTED,
    ROLLED_BACK,
    RUNNING,
    STALE,
    UNREVIEWED,
    Proposal,
    ProposalError,
    new_id,
)
from fraud_pipeline.rules import parse_rule, parse_ruleset
from fraud_pipeline.rules_cli import build

RULE = {"id": "big", "version": 2, "when": {"field": "AMOUNT", "op": ">=", "value": 700}}
NEW = {"id": "btc", "when": {"field": "PAYMENT_TYPE", "op": "==", "value": "BITCOIN"}}
LIVE = parse_ruleset({"threshold": 1, "rules": [{"id": "big", "when": {"field": "AMOUNT", "op": ">=", "value": 500}}]})
OTHER = LIVE.with_rule(parse_rule(NEW))
"""The live set once something else changed it."""


def proposal(**changes: object) -> Proposal:
    made = Proposal("P-1", "ana", "stricter", 1_700_000_000_000, (RULE, NEW), LIVE.version,
                    ({"id": "big", "change": "changed", "live": "big@1", "proposed": "big@2"},))
    return replace(made, **changes)  # type: ignore[arg-type]


def test_its_state_follows_its_evidence_and_the_live_set() -> None:
    p = proposal()
    assert p.state(LIVE.version) == RUNNING
    ready = p.with_evidence({"payments": 3}, LIVE.version, {"read": 3})
    assert (ready.state(LIVE.version), ready.state(OTHER.version)) == (READY, STALE)
    assert ready.decided(REJECTED, "bo", "no", OTHER, 5).state(OTHER.version) == REJECTED  # a stale one can be rejected


def test_four_eyes_and_only_a_fresh_evidence_is_approved() -> None:
    ready = proposal().with_evidence({"payments": 3}, LIVE.version, {})
    with pytest.raises(ProposalError, match="another admin must approve it"):
        ready.decided(APPROVED, "ana", "mine", LIVE, 5)
    with pytest.raises(ProposalError, match="another admin must reject it"):
        ready.decided(REJECTED, "ana", "mine", LIVE, 5)
    with pytest.raises(ProposalError, match="its evidence is still running"):
        proposal().decided(APPROVED, "bo", "ok", LIVE, 5)
    with pytest.raises(ProposalError, match="the live rules changed"):
        ready.decided(APPROVED, "bo", "ok", OTHER, 5)
    approved = ready.decided(APPROVED, "bo", "ok", LIVE, 5)
    assert (approved.state("anything"), approved.decided_by, approved.decided_at_ms) == (APPROVED, "bo", 5)
    # what a rollback needs: the live rule it replaced, as it was, and the one it added
    assert approved.rollback_records() == [("big", dict(LIVE.rules[0].source or {})), ("btc", None)]
    with pytest.raises(ProposalError, match="already approved"):
        approved.decided(REJECTED, "cy", "late", LIVE, 6)
    with pytest.raises(ProposalError, match="is approved: its evidence is not run again"):
        approved.with_evidence({}, LIVE.version, {})


def test_the_record_round_trips_and_a_bad_one_is_refused() -> None:
    p = proposal().with_evidence({"payments": 3}, LIVE.version, {"read": 3}).decided(APPROVED, "bo", "ok", LIVE, 5)
    key, value = p.to_record()
    assert Proposal.from_record(key, value) == p
    data = json.loads(value)
    for bad, why in ((b"{", "not JSON"), (b"[]", "a JSON object"),
                     (json.dumps(data | {"rules": []}).encode(), "non-empty list of rules"),
                     (json.dumps(data | {"decision": "maybe"}).encode(), "decision is approved or rejected"),
                     (json.dumps(data | {"rules": [{"id": "x", "when": {"field": "NOPE"}}]}).encode(), "a proposed rule is invalid"),
                     (json.dumps(data | {"proposer": ""}).encode(), "proposer must be non-empty UTF-8 text")):
        with pytest.raises(ProposalError, match=why):
            Proposal.from_record(key, bad)
    with pytest.raises(ProposalError, match="is not its id"):
        Proposal.from_record(b"P-2", value)


def test_ids_name_the_minute_and_differ() -> None:
    assert new_id(1_765_185_000_000).startswith("P-20251208-0910-")
    assert len({new_id() for _ in range(50)}) > 45


def test_the_commands_take_rules_after_the_command_despite_the_topic_options() -> None:
    """--rules FILE is a prefix of --rules-topic and --rules-rejected-topic: refused as ambiguous before."""
    assert build().parse_args(["list", "--rules", "set.yaml"]).rules == "set.yaml"
    args = build().parse_args(["propose", "f.yaml", "--note", "why", "--rules", "set.yaml", "--since", "0"])
    assert (args.file, args.note, args.rules, args.since, args.no_evidence) == ("f.yaml", "why", "set.yaml", 0, False)
    with pytest.raises(SystemExit):
        build().parse_args(["approve", "P-1"])  # a decision needs its note
    with pytest.raises(SystemExit):
        build().parse_args(["publish", "f.yaml"])  # a direct publish needs its reason


def test_only_an_approved_proposal_is_rolled_back_and_only_once() -> None:
    ready = proposal().with_evidence({"payments": 3}, LIVE.version, {})
    with pytest.raises(ProposalError, match="was not approved"):
        ready.rolled_back("cy", 7)
    undone = ready.decided(APPROVED, "bo", "ok", LIVE, 5).rolled_back("cy", 7)
    assert (undone.state(OTHER.version), undone.rolled_back_by) == (ROLLED_BACK, "cy")
    assert Proposal.from_record(*undone.to_record()) == undone
    with pytest.raises(ProposalError, match="rolled back already, by cy"):
        undone.rolled_back("dee", 8)


def test_an_emergency_change_is_unreviewed_until_another_admin_acknowledges_it() -> None:
    with pytest.raises(ProposalError, match="needs a reason"):
        Proposal.emergency_change("dee", " ", 5, [parse_rule(NEW)], LIVE)
    change = Proposal.emergency_change("dee", "a ring now", 5, [parse_rule(RULE), parse_rule(NEW)], LIVE)
    assert change.id.startswith("E-") and change.state(LIVE.version) == UNREVIEWED
    assert change.rollback_records() == [("big", dict(LIVE.rules[0].source or {})), ("btc", None)]
    with pytest.raises(ProposalError, match="another admin must acknowledge it"):
        change.acknowledged("dee", 6)
    with pytest.raises(ProposalError, match="acknowledge it, or roll it back"):
        change.decided(APPROVED, "eve", "ok", LIVE, 6)
    seen = change.acknowledged("eve", 6)
    assert seen.state(OTHER.version) == ACKNOWLEDGED and Proposal.from_record(*seen.to_record()) == seen
    with pytest.raises(ProposalError, match="acknowledged already, by eve"):
        seen.acknowledged("fay", 7)
    with pytest.raises(ProposalError, match="a proposal, not an emergency change"):
        proposal().acknowledged("eve", 6)
    assert seen.rolled_back("eve", 8).state(LIVE.version) == ROLLED_BACK
