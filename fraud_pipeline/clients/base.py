"""The client seam: what the pipeline asks of a Kafka client, whichever library serves it.

Two backends implement it, one module each: ``kafka_python`` (the default,
the tutorial's client) and ``confluent`` (librdkafka). Times are in seconds;
every call that waits on a broker takes a deadline. Failures are raised as
the kinds of ``types`` (retriable, fenced, fatal), never as a library's own
exception classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .types import Acl, ClusterInfo, GroupInfo, Headers, PartitionInfo, Record, TopicPartition, TopicSpec

Batch = Mapping[TopicPartition, list[Record]]
"""One poll's records, by partition, each list in offset order."""
OnError = Callable[[Exception], None]
"""Called with the reason when a send fails for good."""
OnPartitions = Callable[[set[TopicPartition]], None]
"""Called with partitions a group consumer was assigned, gives up, or lost."""


class Consumer(Protocol):
    """A consumer that reads committed records only (``read_committed``) and commits by hand."""

    def subscribe(self, topic: str, on_assigned: OnPartitions, on_revoked: OnPartitions, on_lost: OnPartitions) -> None:
        """Join the group on ``topic``; ``on_assigned`` gets the whole new assignment after each rebalance.

        The callbacks run inside ``poll``: ``on_revoked`` before partitions are handed over,
        ``on_lost`` when they were taken without a hand-over (the session expired).
        """

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read these partitions from these offsets, outside any group."""

    def poll(self, timeout_s: float, max_records: int) -> Batch:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first; transient errors are logged, not raised."""

    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        """Commit the group's next offsets; ``asynchronous``: without waiting for the answer (a failure is logged)."""

    def committed(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        """The group's committed next offsets (None where nothing is committed)."""

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (an assigned partition)."""

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns now."""

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record to read from ``tp`` (past transaction markers and aborted records)."""

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching these partitions."""

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch these paused partitions again."""

    def group_metadata(self) -> object:
        """The group's metadata for ``Producer.send_offsets_to_transaction``."""

    def partitions_for(self, topic: str, timeout_s: float) -> set[int]:
        """The partitions of ``topic``; UnknownTopicError when it does not exist."""

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        """``(first offset, end offset)`` of each partition; the end is the last stable offset for read_committed."""

    def lag(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """End offset minus position, from what the client learnt with its last fetches (no request); unknown ones left out."""

    def offsets_for_times(self, times: Mapping[TopicPartition, int], timeout_s: float) -> dict[TopicPartition, int | None]:
        """The first offset stamped at or after each time (epoch ms); None when there is none."""

    def close(self) -> None:
        """Leave the group (if any) and close; never raises."""


class Producer(Protocol):
    """An idempotent producer with ``acks=all``; transactional when built with a transactional id."""

    reports_each_send: bool
    """Whether ``settled`` counts sends one by one as their answers come in (else all or nothing: settle by ``flush``)."""

    def on_error(self, handler: OnError) -> None:
        """Who hears of a send that failed for good (from ``send``, ``poll`` or ``flush``)."""

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None, partition: int | None = None,
    ) -> None:
        """Queue one record; a failure reaches the error handler, now or later."""

    def watch_next_acknowledgement(self, note: Callable[[], None]) -> None:
        """Call ``note`` once the next record queued is acknowledged by the brokers (written to its partition), on
        whichever thread hears of it (a trace step: never for a failed send). Needs a producer built with
        ``each_acknowledgement``."""

    def partition_count(self, topic: str, timeout_s: float) -> int:
        """How many partitions ``topic`` has; UnknownTopicError when it does not exist."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acknowledged or failed; RetriableError at the deadline."""

    def sent(self) -> int:
        """How many records were queued so far (every ``send`` that reached the client)."""

    def settled(self) -> int:
        """How many of the records queued so far are settled, counted from the first: each one before is acknowledged
        or failed (a failure reached the error handler first). Never waits: serves the delivery reports already in.
        Without ``reports_each_send``: every one once none is in flight, else 0."""

    def init_transactions(self, timeout_s: float) -> None:
        """Register the transactional id: aborts what a predecessor left open and fences it."""

    def begin_transaction(self) -> None:
        """Start a transaction."""

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group: object, timeout_s: float) -> None:
        """Add the consumer group's next offsets to the open transaction."""

    def commit_transaction(self, timeout_s: float) -> None:
        """Commit the open transaction (after every send of it is acknowledged)."""

    def abort_transaction(self, timeout_s: float) -> None:
        """Abort the open transaction."""

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued (up to the deadline) and close; never raises."""


class Admin(Protocol):
    """Topic creation and cluster metadata."""

    def list_topics(self) -> set[str]:
        """Names of the topics that exist."""

    def broker_count(self) -> int:
        """Brokers in the cluster metadata."""

    def create_topic(self, spec: TopicSpec, configs: Mapping[str, str]) -> bool:
        """Create one topic and wait for it; False when it already exists."""

    def describe_topics(self, names: Iterable[str]) -> dict[str, list[PartitionInfo]]:
        """Partitions of the named topics that exist, in partition order."""

    def delete_topics(self, names: Iterable[str]) -> None:
        """Delete topics (those missing are ignored)."""

    def delete_records(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Delete each partition's records before its offset (what every reader has committed past)."""

    def topic_configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Each named topic's effective configuration (defaults included); topics missing are left out."""

    def create_acls(self, acls: Iterable[Acl]) -> None:
        """Add ALLOW entries (those that exist already stay as they are); the cluster needs an authorizer."""

    def describe_cluster(self) -> ClusterInfo:
        """The cluster's id, controller and brokers."""

    def list_groups(self) -> list[str]:
        """Ids of the consumer groups this client may describe."""

    def describe_groups(self, groups: Iterable[str]) -> list[GroupInfo]:
        """State and members of each group, in the order asked."""

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed next offsets, by partition."""

    def close(self) -> None:
        """Close; never raises."""


class Backend(Protocol):
    """Builds the clients of one library for one cluster."""

    name: str
    """``kafka-python`` or ``confluent``."""

    def producer(self, client_id: str, transactional_id: str | None = None, *, linger_ms: int = 5,
                 each_acknowledgement: bool = False) -> Producer:
        """An idempotent ``acks=all`` producer; transactional with ``transactional_id``. ``each_acknowledgement``: it
        hears of every acknowledged record (a Python call each on confluent, where only failures call back
        otherwise), as ``Producer.watch_next_acknowledgement`` needs."""

    def consumer(self, client_id: str, group_id: str | None, *, max_records: int) -> Consumer:
        """A read_committed consumer: in ``group_id`` (commits by hand, new groups from the earliest offset), or groupless."""

    def admin(self, client_id: str) -> Admin:
        """An admin client."""
