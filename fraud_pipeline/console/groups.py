"""Consumer groups as the console reads them: committed offsets beside the partitions' end offsets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..clients import Admin, ClientError, Consumer, GroupInfo, TopicPartition

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


def watermarks(consumer: Consumer, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
    """First and end offsets of every partition, asked at once (round trips per broker, not per topic); if that fails
    (a topic deleted while it is looked at, a partition without a leader), topic by topic, those that fail left out."""
    wanted = list(dict.fromkeys(partitions))
    if not wanted:
        return {}
    try:
        return consumer.watermarks(wanted, TIMEOUT_S)
    except ClientError as exc:
        log.info("offsets not read at once (%s): asked topic by topic", exc)
    by_topic: dict[str, list[TopicPartition]] = {}
    for tp in wanted:
        by_topic.setdefault(tp.topic, []).append(tp)
    marks: dict[TopicPartition, tuple[int, int]] = {}
    for topic, tps in by_topic.items():
        try:
            marks.update(consumer.watermarks(tps, TIMEOUT_S))
        except ClientError as exc:
            log.info("offsets of %s not read: %s", topic, exc)
    return marks


def read_groups(
    admin: Admin, consumer: Consumer, topic_filter: Callable[[str], bool] = lambda topic: True,
) -> list[tuple[GroupInfo, dict[TopicPartition, int], dict[TopicPartition, tuple[int, int]]]]:
    """Each group with its committed offsets on the topics ``topic_filter`` keeps, and those partitions' watermarks.

    The watermarks of every group's partitions are read in one pass, not group by group.
    """
    described = admin.describe_groups(admin.list_groups())
    committed = {info.group: {tp: offset for tp, offset in admin.group_offsets(info.group).items() if topic_filter(tp.topic)}
                 for info in described}
    marks = watermarks(consumer, {tp for offsets in committed.values() for tp in offsets})
    return [(info, committed[info.group], marks) for info in described]


def lag(marks: dict[TopicPartition, tuple[int, int]], tp: TopicPartition, committed: int) -> int | None:
    """How far ``committed`` is behind the partition's end; None when its end could not be read."""
    return max(0, marks[tp][1] - committed) if tp in marks else None
