"""The pipeline's own Kafka types: records, partitions, topic layouts, cluster descriptions.

Every backend converts its client's objects into these at its edge, so the
stages, rules and tools never see a client's classes (as aiokafka's
``structs.py`` and quix-streams' ``models/types.py`` do for theirs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..frozen import builder

Headers = Sequence[tuple[str, bytes]]
"""Record headers, in order; a name may repeat."""


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    """Topic name."""
    partition: int
    """Partition number, from 0."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from Kafka."""

    topic: str
    """Topic it was read from."""
    partition: int
    """Partition it was read from."""
    offset: int
    """Its offset in that partition."""
    key: bytes | None
    """Key bytes; None when the record has no key."""
    value: bytes | None
    """Value bytes; None for a tombstone."""
    headers: Headers = ()
    """Headers, in order."""
    timestamp: int = 0
    """Record timestamp, epoch milliseconds (0 or less when the record has none)."""


make_record = builder(Record)
"""``make_record(topic, partition, offset, key, value, headers, timestamp)``: a Record, built fast (one per message read)."""


@dataclass(frozen=True)
class TopicSpec:
    """How one topic of the pipeline is created."""

    name: str
    """Topic name."""
    partitions: int
    """Number of partitions."""
    replication_factor: int
    """Copies of each partition."""
    min_insync_replicas: int
    """``min.insync.replicas`` topic config."""
    compacted: bool = False
    """``cleanup.policy=compact``: keep the latest record of each key (the rules topic)."""
    min_compaction_lag_ms: int | None = None
    """``min.compaction.lag.ms``: records younger than this are never compacted away."""


@dataclass(frozen=True)
class PartitionInfo:
    """Where one partition lives, from the cluster metadata."""

    partition: int
    """Partition number."""
    leader: int
    """Broker id of the leader; -1 when it has none."""
    replicas: tuple[int, ...]
    """Broker ids holding a copy."""
    isr: tuple[int, ...]
    """Broker ids in sync with the leader."""


@dataclass(frozen=True, order=True)
class Broker:
    """One broker of the cluster metadata."""

    id: int
    host: str
    port: int


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster's id, controller and brokers."""

    cluster_id: str | None
    controller: int | None
    """Broker id of the active controller, as the brokers report it; None when unknown."""
    brokers: tuple[Broker, ...]


@dataclass(frozen=True)
class GroupMember:
    """One member of a consumer group and the partitions assigned to it."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group: its state (Stable, Empty, PreparingRebalance, ...) and members."""

    group: str
    state: str
    members: tuple[GroupMember, ...]


@dataclass(frozen=True)
class Acl:
    """One ALLOW access control entry: ``principal`` may do ``operation`` on a resource (from any host)."""

    principal: str
    """``User:<name>``."""
    operation: str
    """Kafka's operation name: READ, WRITE, DESCRIBE, IDEMPOTENT_WRITE, ..."""
    resource_type: str
    """TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER."""
    resource_name: str
    """The resource's name (``kafka-cluster`` for the cluster)."""
    prefixed: bool = False
    """The name is a prefix: every resource whose name starts with it."""
