"""Build kafka-python ConsumerRecords for tests."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord


def record(
    value: bytes | None, *, topic: str = "payments", partition: int = 0, offset: int = 0, key: bytes | None = None,
    timestamp: int = 0,
) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic, partition=partition, leader_epoch=0, offset=offset, timestamp=timestamp, timestamp_type=0,
        key=key, value=value, headers=[], checksum=None,
        serialized_key_size=len(key or b""), serialized_value_size=len(value or b""), serialized_header_size=0,
    )
