"""The detector's plan: which stages it runs, which topics join them, which changelogs keep their state.

Without rules over keys other than the account there is one stage: the
detector reads the payments and decides. With them (``DEVICE``, ``TO``...),
three, whatever the number of such keys (fraud_pipeline.rules.order defines
the order they decide in):

    payments ──anchor──▶ <group>-probes ──keys──▶ <group>-answers ──decide──▶ fraud / legit
                  └────────── the payment (its ticket) ──────────────▲

- the anchor reads the payments as the detector's group (its offsets carry
  on from a detector without such rules), decodes each once, runs the
  account's rules in offset order, sends one compact probe per key a rule may
  read to ``probes`` and the payment with the account's findings (its
  *ticket*) to ``answers``, on its own partition; with each commit, a marker
  per partition: its sequence time, which no later probe of it goes below;
- the key stage takes each key partition's probes in the defined order, once
  every payments partition has passed them, and answers to ``answers`` on
  the payment's partition;
- the decider joins each ticket with its answers and decides the payments
  of each partition in offset order.

Every stage is a consume-transform-produce loop with its own group, producer
and changelog; each hop is exactly-once, so the whole path is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import Settings, require
from ..rules import RuleSet
from ..rules.definitions import group_label
from ..rules.order import rekeyed_groups
from ..state import changelog_topic

DEFAULT_GROUP = "fraud-detector"


@dataclass(frozen=True)
class StagePlan:
    """One stage: what it reads, as which group, the changelog of its state, its transactional id's suffix."""

    name: str
    source: str
    group_id: str
    changelog: str
    suffix: str | None
    """Appended to a given ``--transactional-id`` (None: the stage that reads the payments keeps it as it is)."""


@dataclass(frozen=True)
class Plan:
    """The stages of a detector group and every topic between them."""

    groups: tuple[tuple[str, ...], ...]
    """The re-keyed group keys (a probe's group index is its place here); empty: one stage."""
    payments: str
    probes: str
    answers: str
    stages: tuple[StagePlan, ...]

    @property
    def rekeyed(self) -> bool:
        return bool(self.groups)

    @property
    def internal_topics(self) -> tuple[str, ...]:
        """The topics between stages (partitioned as the payments; purged up to what their readers committed)."""
        return (self.probes, self.answers) if self.groups else ()

    def describe(self) -> str:
        if not self.groups:
            return f"{self.payments} -> decide"
        keys = ", ".join(group_label(g) for g in self.groups)
        return f"{self.payments} -> anchor -> {self.probes} -> keys ({keys}) -> {self.answers} -> decide"


def plan(settings: Settings, ruleset: RuleSet) -> Plan:
    """The plan for a rule set: the groups its active rules re-key by, and the stages and topics they need."""
    group_id = require(settings.consumer, "consumer").group_id or DEFAULT_GROUP
    payments = settings.topics.payments
    groups = rekeyed_groups(ruleset)
    if not groups:
        return Plan((), payments, "", "", (StagePlan("decide", payments, group_id, changelog_topic(group_id, payments), None),))
    probes, answers = f"{group_id}-probes", f"{group_id}-answers"
    keys_group, decide_group = f"{group_id}-keys", f"{group_id}-decide"
    stages = (
        StagePlan("anchor", payments, group_id, changelog_topic(group_id, payments), None),
        StagePlan("keys", probes, keys_group, f"{keys_group}-changelog", "keys"),
        StagePlan("decide", answers, decide_group, f"{decide_group}-changelog", "decide"),
    )
    return Plan(groups, payments, probes, answers, stages)


def stage_settings(settings: Settings, stage: StagePlan, *, quiet: bool) -> Settings:
    """A stage's settings: its input topic and group; its own transactional id when one was given."""
    consumer = replace(require(settings.consumer, "consumer"), group_id=stage.group_id)
    if quiet:
        consumer = replace(consumer, quiet=True)  # only the decider prints
    delivery = settings.delivery
    if delivery is not None and delivery.transactional_id and stage.suffix:
        delivery = replace(delivery, transactional_id=f"{delivery.transactional_id}-{stage.suffix}")
    return replace(settings, topics=replace(settings.topics, payments=stage.source), consumer=consumer, delivery=delivery)
