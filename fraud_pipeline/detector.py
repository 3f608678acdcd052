"""The fraud detector: reads payments, routes each to the fraud or legit topic.

Prints the original tutorial's line per payment, ``<topic> <True|False> <PAYMENT_TYPE>``,
e.g. ``fraud_payments True BITCOIN``. The routed record is the input record's
key and value byte for byte, so the original processors read it unchanged.
Exactly-once by default (see fraud_pipeline.stage).
"""

from __future__ import annotations

import threading

from kafka.consumer.fetcher import ConsumerRecord

from .config import Settings, build_parser
from .kafka_io import DeadLetters, Output
from .rules import route
from .runtime import Summary, run_cli
from .stage import LineBuffer, decode_or_reject, run_stage

NAME = "fraud_detector"
DEFAULT_GROUP = "fraud-detector"


class Detector:
    """Routes each payment record; unreadable records go to the dead-letter topic."""

    def __init__(self, output: Output, settings: Settings, dead_letters: DeadLetters, lines: LineBuffer) -> None:
        self._output = output
        self._fraud_topic = settings.topics.fraud
        self._legit_topic = settings.topics.legit
        self._dead_letters = dead_letters
        self._lines = lines
        self.emit = lines.emit
        self.discard = lines.discard

    def handle(self, record: ConsumerRecord) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines)
        if payment is None:
            return
        topic = route(payment, self._fraud_topic, self._legit_topic)
        self._output.send(topic, record.key, record.value)
        self._lines.add(topic, f"{topic} {topic == self._fraud_topic} {payment.payment_type}")


def run(settings: Settings, stop: threading.Event) -> int:
    return run_stage(
        settings, name=NAME, source_topic=settings.topics.payments, stop=stop, summary=Summary(NAME, "payments"),
        make_handler=lambda output, dead_letters, lines: Detector(output, settings, dead_letters, lines),
        transactional=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        NAME,
        "Read payments and route each one: BITCOIN to the fraud topic, the rest to the legit topic. "
        "Prints '<topic> <True|False> <PAYMENT_TYPE>' per payment; unreadable records go to the "
        "dead-letter topic.",
        consumes="the payments topic",
        default_group=DEFAULT_GROUP,
        transactional=True,
    )
    return run_cli(NAME, parser, argv, run)
