"""How far each stage of the decision path has come, kept in its state beside the rules' entities.

One ``Progress`` per partition of a stage's input, under PROGRESS_KEY in the
partition's table, so that it is committed with the state it describes (the
changelog, then the local store):

- the anchor: the partition's sequence time (the latest event time read);
- the key stage: per payments partition, the last probe answered, and the
  sequence time each had promised as of the offset the commit goes back to;
- the decider: the last payment decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..rules import decode_entity, encode_entity

PROGRESS_KEY = b"\xff\xfeprogress"
_TAG = b"P"
"""What starts an encoded Progress (an entity's JSON starts with ``[``)."""


@dataclass
class Progress:
    seq: int | None = None
    done: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per origin partition: the last (offset, group) handled."""
    frontier: dict[int, int] = field(default_factory=dict)
    """Per origin partition: the sequence time it had promised."""


def encode_state(value: Any) -> bytes:
    if isinstance(value, Progress):
        return _TAG + orjson.dumps([value.seq, sorted(value.done.items()), sorted(value.frontier.items())])
    return encode_entity(value)


def decode_state(data: bytes) -> Any:
    if data[:1] == _TAG:
        seq, done, frontier = orjson.loads(data[1:])
        return Progress(seq, {int(p): (int(o), int(g)) for p, (o, g) in done}, {int(p): int(s) for p, s in frontier})
    return decode_entity(data)
