"""The pipeline's topics: their specs, creating the missing ones (idempotent), checking and describing them.

Every script prepares the topics it reads and writes at start-up
(``prepare_topics``); the command creates them all and reports what exists:

    python -m fraud_pipeline.topics [--bootstrap-servers ...]

Layout (override with the environment variables in brackets):

- payments: 6 partitions [PAYMENTS_PARTITIONS]: divides evenly among 1, 2 or
  3 detectors and puts two partition leaders on each of the three brokers;
- fraud_payments, legit_payments: 2 partitions, as the original tutorial [ROUTED_PARTITIONS];
- payments_dlq: 1 partition;
- fraud_rules: 1 partition, compacted (the live rules, keyed by rule id) [RULES_TOPIC];
- fraud_rules_rejected: 1 partition [RULES_REJECTED_TOPIC];
- fraud_lists: 1 partition, compacted (the lists' entries) [LISTS_TOPIC];
- fraud_list_definitions: 1 partition, compacted (the lists themselves, written
  by the rules admin only) [LIST_DEFINITIONS_TOPIC];
- fraud_labels: 1 partition, compacted (analysts' verdicts, keyed by payment id) [LABELS_TOPIC];
- fraud_audit: 1 partition (what analysts do) [AUDIT_TOPIC];
- fraud_claims: 1 partition, compacted, records kept 30 minutes before any
  compaction (who holds each case) [CLAIMS_TOPIC];
- fraud_rule_proposals: 1 partition, compacted (proposed rule changes, their
  evidence and decisions) [PROPOSALS_TOPIC];
- all with replication factor 3 [TOPIC_REPLICATION_FACTOR] and
  min.insync.replicas=2 [TOPIC_MIN_INSYNC_REPLICAS].
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .claims import CLAIM_S
from .clients import Admin, ClientError, NotAuthorizedError, RetriableError, TopicPartition, TopicSpec
from .config import Settings, TopicSettings, build_parser, settings_from_args
from .errors import PipelineError
from .kafka_io import connect, retrying
from .rules import RuleError, RuleSet
from .runtime import cli_main, setup_logging

# The logger these functions always logged under ("created topic ..."): log lines stay as they were.
log = logging.getLogger("fraud_pipeline.kafka_io")


def pipeline_topics(topics: TopicSettings, names: Iterable[str] | None = None) -> list[TopicSpec]:
    """Specs of the pipeline's topics (or only those named)."""
    partitions = {
        topics.payments: topics.payments_partitions,
        topics.fraud: topics.routed_partitions,
        topics.legit: topics.routed_partitions,
        topics.dead_letter: topics.dead_letter_partitions,
        topics.rules: 1,  # one partition: rule changes apply in the order they were published
        topics.rules_rejected: 1,
        topics.lists: 1,  # one partition: list changes apply in the order they were made
        topics.list_definitions: 1,
        topics.labels: 1,
        topics.audit: 1,
        topics.claims: 1,  # one partition: every console applies the claims in one order
        topics.proposals: 1,
    }
    wanted = list(partitions) if names is None else list(names)
    return [
        TopicSpec(
            name, partitions[name], topics.replication_factor,
            min(topics.min_insync_replicas, topics.replication_factor),
            compacted=name in (topics.rules, topics.lists, topics.list_definitions, topics.labels, topics.claims,
                               topics.proposals),
            min_compaction_lag_ms=round(CLAIM_S * 1000) if name == topics.claims else None,
        )
        for name in wanted
    ]


NEW_TOPIC_METADATA_S = 30.0
"""How long a script waits for the brokers to know a topic it just created."""


def _admin(settings: Settings) -> Admin:
    try:
        return connect(settings).admin("fraud-pipeline-admin")
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def ensure_topics(settings: Settings, specs: list[TopicSpec], uses: Mapping[str, str] | None = None) -> dict[str, str]:
    """Create the topics that do not exist; return ``{name: "created" | "exists"}``.

    ``uses`` says what the script does with each topic ("read", "write"), for
    the error when the cluster's ACLs hide one from it.

    Admin requests are tried again after a transient failure: a script starts
    while a broker is down.
    """
    try:
        return retrying(lambda: _ensure_topics(settings, specs, uses or {}))
    except ClientError as exc:
        raise PipelineError(str(exc)) from None


def _who(settings: Settings) -> str:
    security = settings.connection.security
    return f"user {security.sasl_username}" if security.uses_sasl else "this client"


def not_authorized(settings: Settings, exc: NotAuthorizedError, operation: str) -> PipelineError:
    """The one line a script stops with when the cluster's ACLs refuse it a topic."""
    return PipelineError(f"not authorized to {operation} topic {exc.resource} ({_who(settings)} at "
                         f"{','.join(settings.connection.bootstrap_servers)}): ask the cluster's admin for the ACL")


def _ensure_topics(settings: Settings, specs: list[TopicSpec], uses: Mapping[str, str]) -> dict[str, str]:
    admin = _admin(settings)
    try:
        existing = admin.list_topics()
        outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:  # a topic this user may not see is not listed: asked by name, the cluster says so
                admin.describe_topics([spec.name for spec in missing])
            except NotAuthorizedError as exc:
                raise not_authorized(settings, exc, uses.get(exc.resource, "describe")) from None
            brokers = admin.broker_count()
            for spec in missing:
                if spec.replication_factor > brokers:
                    raise PipelineError(
                        f"cannot create topic {spec.name} with replication factor {spec.replication_factor}:"
                        f" the cluster has {brokers} broker(s); set TOPIC_REPLICATION_FACTOR"
                    )
        for spec in missing:
            configs = {"min.insync.replicas": str(spec.min_insync_replicas)}
            if spec.compacted:
                configs["cleanup.policy"] = "compact"
                # Tombstones (removed rules) are kept 10 years, not the default day:
                # a detector started later must still see that the rule was removed.
                configs["delete.retention.ms"] = str(10 * 365 * 24 * 3600 * 1000)
            if spec.min_compaction_lag_ms is not None:
                configs["min.compaction.lag.ms"] = str(spec.min_compaction_lag_ms)
            try:
                # False: created meanwhile by another process
                outcome[spec.name] = "created" if admin.create_topic(spec, configs) else "exists"
            except NotAuthorizedError:
                raise PipelineError(f"topic {spec.name} does not exist, and {_who(settings)} is not authorized to create it: "
                                    "ask the cluster's admin (`make topics` with the admin's client file)") from None
        _await_metadata(admin, [spec for spec in missing if outcome[spec.name] == "created"])
        return outcome
    except RetriableError:
        raise
    except ClientError as exc:
        raise PipelineError(str(exc)) from None
    finally:
        admin.close()


def _await_metadata(admin: Admin, created: list[TopicSpec], timeout_s: float = NEW_TOPIC_METADATA_S) -> None:
    """Wait until the metadata shows the topics just created, every partition with a leader.

    A topic is created by the controller; the brokers learn of it a moment later, each at its own
    pace. Until then a look-up on one of them says it does not exist (a describe, its configs).
    This narrows that window; the look-ups that follow a creation still ask again (``retrying``,
    ``prepare_changelog``), since the next one may reach a broker slower than this one.
    """
    if not created:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = admin.describe_topics([spec.name for spec in created])
        except RetriableError:
            found = {}
        waiting = [spec.name for spec in created
                   if len(found.get(spec.name, [])) != spec.partitions or any(p.leader < 0 for p in found[spec.name])]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            log.warning("topic(s) %s created but not yet in the brokers' metadata after %gs; going on", ", ".join(waiting), timeout_s)
            return
        time.sleep(0.2)


def prepare_topics(settings: Settings, reads: Iterable[str] = (), writes: Iterable[str] = ()) -> dict[str, str]:
    """Create the missing topics a script reads and writes (logging each), or with ``--no-create-topics`` check they exist."""
    uses = {name: "read" for name in reads}
    for name in writes:
        uses[name] = "read and write" if name in uses else "write"
    specs = pipeline_topics(settings.topics, uses)
    if settings.create_topics:
        outcome = ensure_topics(settings, specs, uses)
        for topic, state in outcome.items():
            if state == "created":
                log.info("created topic %s", topic)
        return outcome
    try:
        present = set(describe_topics(settings, [spec.name for spec in specs]))
    except NotAuthorizedError as exc:
        raise not_authorized(settings, exc, uses.get(exc.resource, "describe")) from None
    missing = [spec.name for spec in specs if spec.name not in present]
    if missing:
        raise PipelineError(f"topic(s) {', '.join(missing)} do not exist: run `make topics`, or drop --no-create-topics")
    return {spec.name: "exists" for spec in specs}


def describe_topics(settings: Settings, names: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (partitions, replication factor)}`` of the named topics that exist."""
    admin = _admin(settings)
    try:
        found = retrying(lambda: admin.describe_topics(names))
    except NotAuthorizedError:
        raise
    except ClientError as exc:
        raise PipelineError(str(exc)) from None
    finally:
        admin.close()
    return {name: (len(parts), len(parts[0].replicas) if parts else 0) for name, parts in found.items()}


def prepare_changelog(settings: Settings, source_topic: str, changelog: str) -> bool:
    """Create the compacted changelog of a stage's state over ``source_topic`` if missing; True if it was created now.

    PipelineError when it exists with another partition count than its input: each
    changelog partition holds the state of the input partition of the same number.
    """
    deadline = time.monotonic() + NEW_TOPIC_METADATA_S
    while source_topic not in (layout := describe_topics(settings, [source_topic, changelog])):
        # created moments ago (a re-keying topic): the broker asked may not know it yet
        if time.monotonic() >= deadline:
            raise PipelineError(f"topic {source_topic} does not exist: its state's changelog {changelog} cannot be laid out like it")
        time.sleep(0.5)
    partitions = layout[source_topic][0]
    if changelog in layout:
        if layout[changelog][0] != partitions:
            raise PipelineError(
                f"changelog {changelog} has {layout[changelog][0]} partitions but its input {source_topic} has {partitions}: "
                "each changelog partition holds the state of one input partition. After re-partitioning the input, "
                f"delete {changelog} and the detectors' state folders (the state then starts afresh)"
            )
        return False
    spec = TopicSpec(changelog, partitions, settings.topics.replication_factor,
                     min(settings.topics.min_insync_replicas, settings.topics.replication_factor), compacted=True)
    created = ensure_topics(settings, [spec], {changelog: "read and write"})[changelog] == "created"
    if created:
        log.info("created topic %s (compacted, %d partitions like %s)", changelog, partitions, source_topic)
    return created


def prepare_internal_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    """Create the topics between the detector's stages if missing, with ``partitions`` (its input's count).

    PipelineError when one exists with another count: a payment's ticket and answers meet on its own partition.
    """
    topics = settings.topics
    names = list(names)
    specs = [TopicSpec(name, partitions, topics.replication_factor,
                       min(topics.min_insync_replicas, topics.replication_factor)) for name in names]
    for name, state in ensure_topics(settings, specs, {spec.name: "read and write" for spec in specs}).items():
        if state == "created":
            log.info("created topic %s (%d partitions like %s)", name, partitions, topics.payments)
    for name, (found, _) in describe_topics(settings, names).items():
        if found != partitions:
            raise PipelineError(f"topic {name} has {found} partitions but {topics.payments} has {partitions}: delete it "
                                "(and the detector's state folders and changelogs) to start the decision path afresh")


def delete_records(settings: Settings, offsets: Mapping[TopicPartition, int]) -> None:
    """Delete each partition's records before its offset (an internal topic's, once its reader committed past them)."""
    admin = _admin(settings)
    try:
        admin.delete_records(offsets)
    finally:
        admin.close()


def _retention_ms(configs: Mapping[str, str]) -> int | None:
    """How long a topic keeps records (ms), None when it keeps them (or, compacted, each key's last) without limit."""
    if "delete" not in configs.get("cleanup.policy", "delete"):
        return None
    retention = int(configs.get("retention.ms", "-1"))
    return None if retention < 0 else retention


@dataclass(frozen=True)
class RetentionLimits:
    """The longest history a rule set may read: what the changelog, the state's store of record, keeps."""

    changelog: str
    changelog_ms: int | None
    source: str
    source_ms: int | None

    def check(self, ruleset: RuleSet) -> None:
        """RuleError naming the rule whose window is longer than the changelog keeps."""
        for rule in ruleset.active:
            if self.changelog_ms is not None and rule.window_ms > self.changelog_ms:
                raise RuleError("", f"its window of {rule.window_ms / 1000:g}s is longer than topic {self.changelog} keeps "
                                    f"(retention.ms={self.changelog_ms}): set the topic's cleanup.policy to compact, or "
                                    "shorten the window", rule.id)

    def replay_short(self, ruleset: RuleSet) -> str | None:
        """Why a rebuild from the input (no changelog yet) can only be partial: its retention is shorter than a window."""
        longest = ruleset.retention_ms
        if self.source_ms is not None and longest > self.source_ms:
            return (f"topic {self.source} keeps {self.source_ms / 1000:g}s (retention.ms), less than the longest window "
                    f"({longest / 1000:g}s): the state rebuilt from it starts with what it still holds")
        return None


def retention_limits(settings: Settings, source_topic: str, changelog: str) -> RetentionLimits:
    """What the changelog and the input keep, read from the cluster."""
    admin = _admin(settings)
    try:
        configs = retrying(lambda: admin.topic_configs([source_topic, changelog]))
    except ClientError as exc:
        raise PipelineError(f"cannot read the configuration of {source_topic} and {changelog}: {exc}") from None
    finally:
        admin.close()
    return RetentionLimits(changelog, _retention_ms(configs.get(changelog, {})), source_topic,
                           _retention_ms(configs.get(source_topic, {})))


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "python -m fraud_pipeline.topics",
        "Create the pipeline's topics if they are missing and show each one's layout.",
        consumes=None,
    )
    settings = settings_from_args(parser.parse_args(argv))
    log = setup_logging("topics")
    specs = pipeline_topics(settings.topics)
    try:
        outcome = ensure_topics(settings, specs)
        layout = describe_topics(settings, [spec.name for spec in specs])
    except PipelineError as exc:
        log.error("%s", exc)
        return 1
    for spec in specs:
        partitions, replicas = layout.get(spec.name, (0, 0))
        print(f"{spec.name}: {outcome[spec.name]} ({partitions} partitions, replication factor {replicas}, "
              f"min.insync.replicas {spec.min_insync_replicas})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
