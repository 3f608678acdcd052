"""The fraud detector: reads payments, routes each to the fraud or legit topic.

Prints the original tutorial's line per payment, ``<topic> <True|False> <PAYMENT_TYPE>``,
e.g. ``fraud_payments True BITCOIN``. The routed record is the input record's
key and value byte for byte, so the original processors read it unchanged.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from .config import Settings, build_parser
from .kafka_io import DeadLetters, DeliveryTracker, run_stage
from .payment import InvalidPayment, decode
from .rules import is_suspicious
from .runtime import Summary, run_cli

NAME = "fraud_detector"
DEFAULT_GROUP = "fraud-detector"


class Detector:
    """Routes each payment record; unreadable records go to the dead-letter topic."""

    def __init__(
        self,
        producer: KafkaProducer,
        settings: Settings,
        dead_letters: DeadLetters,
        tracker: DeliveryTracker,
        summary: Summary,
        out: TextIO = sys.stdout,
    ) -> None:
        self._producer = producer
        self._fraud_topic = settings.topics.fraud
        self._legit_topic = settings.topics.legit
        self._dead_letters = dead_letters
        self._tracker = tracker
        self._summary = summary
        self._quiet = settings.quiet
        self._out = out

    def handle(self, record: ConsumerRecord) -> None:
        try:
            payment = decode(record.value)
        except InvalidPayment as exc:
            self._dead_letters.send(record, str(exc))
            self._summary.add("dead-lettered")
            return
        suspicious = is_suspicious(payment)
        topic = self._fraud_topic if suspicious else self._legit_topic
        self._producer.send(topic, key=record.key, value=record.value).add_errback(self._tracker.on_error)
        self._summary.add(topic)
        if not self._quiet:
            print(topic, suspicious, payment.payment_type, file=self._out)

    def flush(self) -> None:
        self._producer.flush()
        self._tracker.check(NAME)
        self._out.flush()


def run(settings: Settings, stop: threading.Event) -> int:
    summary = Summary(NAME, "payments")
    return run_stage(
        settings, name=NAME, source_topic=settings.topics.payments, stop=stop, summary=summary,
        make_handler=lambda producer, dead_letters, tracker: Detector(
            producer, settings, dead_letters, tracker, summary
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        NAME,
        "Read payments and route each one: BITCOIN to the fraud topic, the rest to the legit topic. "
        "Prints '<topic> <True|False> <PAYMENT_TYPE>' per payment; unreadable records go to the "
        "dead-letter topic. Delivery: at-least-once (output flushed before offsets are committed).",
        consumes="the payments topic",
        default_group=DEFAULT_GROUP,
    )
    return run_cli(NAME, parser, argv, run)
