"""Build the seam's records (fraud_pipeline.clients.Record) for tests, and read back what a mocked producer sent."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple
from unittest.mock import MagicMock

from fraud_pipeline.clients import Headers, Producer, Record


def record(
    value: bytes | None, *, topic: str = "payments", partition: int = 0, offset: int = 0, key: bytes | None = None,
    timestamp: int = 0, headers: Headers = (),
) -> Record:
    return Record(topic=topic, partition=partition, offset=offset, key=key, value=value, headers=headers, timestamp=timestamp)


class Sent(NamedTuple):
    """One ``Producer.send`` call, by the seam's parameter names."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    partition: int | None


_SEND = inspect.signature(Producer.send)


def sent(call: Any) -> Sent:
    """A recorded ``send`` call bound to the seam's signature (TypeError if it does not fit)."""
    bound = _SEND.bind(None, *call.args, **call.kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["self"]
    return Sent(**arguments)


def sends(producer: MagicMock) -> list[Sent]:
    """Every ``send`` of a ``MagicMock(spec_set=Producer)``, in order."""
    return [sent(call) for call in producer.send.call_args_list]
