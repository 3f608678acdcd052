"""Where a decision sends a payment: the routed record (the input's bytes with its DECISION), its header and its line."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ..metrics import Metrics
from ..payment import with_field
from ..rules import Decision
from ..rules.lists import APPROVE, DECLINE, REVIEWED
from ..stage import LineBuffer, Output


@lru_cache(maxsize=4096)
def decision_header(decision: Decision) -> tuple[str, bytes]:
    """The ``decision`` header, e.g. ``fraud score=2 rules=burst@1,large-to-stranger@1 shadow=bitcoin@1``.

    One header, not one per item: kafka-python encodes headers in Python, and
    each one costs about 4 µs per record.
    """
    outcome = decision.outcome
    parts = ["fraud" if outcome == DECLINE else "review" if outcome == REVIEWED else "legit", f"score={decision.score:g}"]
    for mode, name in (("enabled", "rules"), ("shadow", "shadow")):
        refs = [f"{f.id}@{f.version}" for f in decision.fired if f.mode == mode]
        if refs:
            parts.append(f"{name}={','.join(refs)}")
    if decision.listed:
        parts.append(f"lists={','.join(sorted({hit.list for hit in decision.listed}))}")
    return ("decision", " ".join(parts).encode())


class Route(NamedTuple):
    """Where a decision sends a payment, and the parts of its routed record and printed line that do not vary."""

    topic: str
    suffix: bytes
    """What replaces the value's closing brace: ``, "DECISION": {...}}`` (payment.with_field's)."""
    header: tuple[str, bytes]
    line: str
    """The printed line up to the payment type: ``fraud_payments True ``."""


ROUTES_KEPT = 4096
"""Routes of distinct decisions kept (then the router starts over)."""


class Router:
    """Sends each decided payment to the fraud or legit topic, its line to the buffer, its decision to the metrics."""

    def __init__(self, output: Output, fraud_topic: str, legit_topic: str, lines: LineBuffer,
                 metrics: Metrics | None) -> None:
        self._output = output
        self._fraud_topic = fraud_topic
        self._legit_topic = legit_topic
        self._lines = lines
        self._metrics = metrics if metrics is not None and metrics.enabled else None
        self._routes: dict[bytes, Route] = {}
        """Per decision's JSON (a bytes object keeps its hash): its route."""

    def send(self, decision: Decision, key: bytes | None, value: bytes | None, partition: int, timestamp: int,
             payment_type: str) -> None:
        """Route one payment read from ``partition`` of the input (its record's key, value and timestamp)."""
        route = self._routes.get(decision.to_json())
        if route is None:
            route = self._route(decision)
        topic = route.topic
        # payment.with_field(value, "DECISION", decision.to_json()), its constant part made once per decision
        routed = (value or b"").rstrip()[:-1] + route.suffix
        self._output.send(topic, key, routed, [route.header], self._output.partition_for(topic, partition))
        if self._metrics is not None:
            self._metrics.decided(timestamp, route.header, decision.fired)
        self._lines.add(topic, route.line + payment_type)

    def _route(self, decision: Decision) -> Route:
        outcome = decision.outcome
        topic = self._legit_topic if outcome == APPROVE else self._fraud_topic
        decision_json = decision.to_json()
        route = Route(topic, with_field(b"}", "DECISION", decision_json), decision_header(decision),
                      f"{topic} {'Review' if outcome == REVIEWED else outcome == DECLINE} ")
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[decision_json] = route
        return route
