"""Kafdrop's view of the cluster, read-only: brokers, topics, consumer groups and a message browser.

Every look goes through the client seam with the console's settings. Calls
are serialized (one admin client and one consumer, used by one thread at a
time); the web server runs them in a worker thread. Bad input raises
BadRequest with a message meant for the page.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from ..clients import Admin, Consumer, Record, TopicPartition, UnknownTopicError
from ..config import Settings
from ..kafka_io import connect
from .groups import TIMEOUT_S, lag, read_groups, watermarks
from .monitor import record_json

MAX_MESSAGES = 500


class BadRequest(Exception):
    """A request the page asked wrongly (an unknown topic, a partition that does not exist, ...)."""


class ClusterView:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._admin: Admin | None = None
        self._consumer: Consumer | None = None

    def _clients(self) -> tuple[Admin, Consumer]:
        if self._admin is None or self._consumer is None:
            backend = connect(self._settings)
            self._admin = self._admin or backend.admin("fraud-console-view")
            self._consumer = self._consumer or backend.consumer("fraud-console-view", None, max_records=MAX_MESSAGES)
        return self._admin, self._consumer

    def close(self) -> None:
        with self._lock:
            for client in (self._consumer, self._admin):
                if client is not None:
                    client.close()
            self._admin = self._consumer = None

    def brokers(self) -> dict[str, Any]:
        with self._lock:
            admin, _ = self._clients()
            info = admin.describe_cluster()
        return {
            "cluster_id": info.cluster_id, "controller": info.controller,
            "brokers": [{"id": b.id, "host": b.host, "port": b.port, "controller": b.id == info.controller}
                        for b in info.brokers],
        }

    def topics(self) -> dict[str, Any]:
        with self._lock:
            admin, consumer = self._clients()
            names = sorted(admin.list_topics())
            described = admin.describe_topics(names)
            marks = watermarks(consumer, (TopicPartition(name, p.partition) for name, parts in described.items() for p in parts))
        topics = []
        for name in names:
            parts = described.get(name, [])
            details: list[dict[str, Any]] = []
            for p in parts:
                first, last = marks.get(TopicPartition(name, p.partition), (None, None))
                details.append({"partition": p.partition, "leader": p.leader, "replicas": list(p.replicas),
                                "isr": list(p.isr), "under_replicated": len(p.isr) < len(p.replicas),
                                "first": first, "last": last})
            known = [d for d in details if d["first"] is not None]
            topics.append({
                "name": name, "internal": name.startswith("__"), "partitions": len(parts),
                "replication": max((len(p.replicas) for p in parts), default=0),
                "under_replicated": sum(d["under_replicated"] for d in details),
                "first": sum(d["first"] for d in known), "last": sum(d["last"] for d in known),
                "size": sum(d["last"] - d["first"] for d in known), "partition_details": details,
            })
        return {"topics": topics}

    def groups(self) -> dict[str, Any]:
        with self._lock:
            admin, consumer = self._clients()
            found = read_groups(admin, consumer)
        groups = []
        for info, offsets, marks in found:
            rows: list[dict[str, Any]] = [{"topic": tp.topic, "partition": tp.partition, "committed": offset,
                     "end": marks[tp][1] if tp in marks else None, "lag": lag(marks, tp, offset)}
                    for tp, offset in sorted(offsets.items())]
            groups.append({
                "group": info.group, "state": info.state, "lag": sum(r["lag"] or 0 for r in rows),
                "members": [{"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                             "partitions": [{"topic": tp.topic, "partition": tp.partition} for tp in m.partitions]}
                            for m in info.members],
                "offsets": rows,
            })
        return {"groups": groups}

    def messages(self, topic: str, partition: int, count: int, *, offset: int | None = None,
                 time_ms: int | None = None) -> dict[str, Any]:
        """Up to ``count`` records of one partition from ``offset``, or from the first stamped at or after ``time_ms``."""
        if not 1 <= count <= MAX_MESSAGES:
            raise BadRequest(f"count must be between 1 and {MAX_MESSAGES}")
        with self._lock:
            admin, consumer = self._clients()
            try:
                partitions = consumer.partitions_for(topic, TIMEOUT_S)
            except UnknownTopicError:
                admin.describe_topics([topic])  # NotAuthorizedError when it exists but is hidden from this user
                raise BadRequest(f"topic {topic!r} does not exist") from None
            if partition not in partitions:
                raise BadRequest(f"partition {partition} does not exist: {topic} has partitions 0-{max(partitions)}")
            tp = TopicPartition(topic, partition)
            first, end = consumer.watermarks([tp], TIMEOUT_S)[tp]
            if time_ms is not None:
                start = consumer.offsets_for_times({tp: time_ms}, TIMEOUT_S).get(tp)
                start = end if start is None else start
            elif offset is None:
                start = max(first, end - count)
            elif not first <= offset <= end:
                raise BadRequest(f"offset {offset} is out of range: partition {partition} of {topic} "
                                 f"holds offsets {first} to {end - 1}" if end > first else
                                 f"offset {offset} is out of range: partition {partition} of {topic} is empty")
            else:
                start = offset
            records: list[Record] = []
            if start < end:
                consumer.assign({tp: start})
                last_record_at = time.monotonic()
                while len(records) < count and time.monotonic() - last_record_at < TIMEOUT_S:  # give up when it goes quiet
                    got = consumer.poll(0.5, count - len(records)).get(tp, [])
                    if got:
                        records.extend(got)
                        last_record_at = time.monotonic()
                    if consumer.position(tp) >= end:
                        break
        return {"topic": topic, "partition": partition, "first": first, "end": end,
                "messages": [message_json(r) for r in records[:count]]}


def message_json(record: Record) -> dict[str, Any]:
    message = record_json(record)
    try:
        message["json"] = orjson.loads(record.value) if record.value else None
    except orjson.JSONDecodeError:
        message["json"] = None
    return message
