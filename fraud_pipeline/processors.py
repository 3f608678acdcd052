"""The fraud and legit processors: print the outcome of each routed payment.

The lines are the original tutorial's, byte for byte::

    [ALERT] fraud detected payment to: stranger - 42     (fraud topic, TO == "stranger")
    [PROCESSING BITCOIN] payment to: mom - 42            (fraud topic, any other TO)
    [VISA] payment to: me - 7                            (legit topic)
    [MASTERCARD] payment to: dad - 7                     (legit topic)
    [ALERT] unable to process payments                   (legit topic, any other type)

Both read committed records only, so they never see a payment from an aborted
detector transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka.consumer.fetcher import ConsumerRecord

from .config import Settings, TopicSettings, build_parser
from .kafka_io import DeadLetters
from .payment import Payment
from .runtime import Summary, run_cli
from .stage import LineBuffer, decode_or_reject, run_stage


def fraud_line(payment: Payment) -> str:
    """What the original fraud_processor printed for a payment."""
    if payment.to == "stranger":
        return f"[ALERT] fraud detected payment to: {payment.to} - {payment.amount}"
    return f"[PROCESSING BITCOIN] payment to: {payment.to} - {payment.amount}"


def legit_line(payment: Payment) -> str:
    """What the original legit_processor printed for a payment."""
    if payment.payment_type == "VISA":
        return f"[VISA] payment to: {payment.to} - {payment.amount}"
    if payment.payment_type == "MASTERCARD":
        return f"[MASTERCARD] payment to: {payment.to} - {payment.amount}"
    return "[ALERT] unable to process payments"


class Processor:
    """Prints one line per payment; unreadable records go to the dead-letter topic.

    Any PAYMENT_TYPE is accepted here, so the legit processor can print the
    original's "unable to process" line for a type it does not know.
    At-least-once: lines are printed before the offsets are committed.
    """

    def __init__(self, line: Callable[[Payment], str], dead_letters: DeadLetters, lines: LineBuffer) -> None:
        self._line = line
        self._dead_letters = dead_letters
        self._lines = lines
        self.emit = lines.emit
        self.discard = lines.discard

    def handle(self, record: ConsumerRecord) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines, known_types_only=False)
        if payment is None:
            return
        text = self._line(payment)
        # "[VISA] payment to: ..." counts as VISA; "[ALERT] ..." as ALERT
        self._lines.add(text[1 : text.index("]")], text)


def _run_processor(
    name: str, topic: str, line: Callable[[Payment], str], settings: Settings, stop: threading.Event
) -> int:
    return run_stage(
        settings, name=name, source_topic=topic, stop=stop, summary=Summary(name, "payments"),
        make_handler=lambda output, dead_letters, lines: Processor(line, dead_letters, lines),
    )


def _processor_main(
    name: str, topic_of: Callable[[TopicSettings], str], line: Callable[[Payment], str], description: str,
    argv: list[str] | None,
) -> int:
    kind = name.split("_")[0]  # "fraud" or "legit"
    parser = build_parser(name, description, consumes=f"the {kind} topic", default_group=name.replace("_", "-"))
    return run_cli(name, parser, argv, lambda s, stop: _run_processor(name, topic_of(s.topics), line, s, stop))


def fraud_main(argv: list[str] | None = None) -> int:
    return _processor_main(
        "fraud_processor", lambda topics: topics.fraud, fraud_line,
        "Read the fraud topic and print each payment: '[ALERT] fraud detected payment to: stranger - N' "
        "for payments to a stranger, '[PROCESSING BITCOIN] payment to: TO - N' otherwise.",
        argv,
    )


def legit_main(argv: list[str] | None = None) -> int:
    return _processor_main(
        "legit_processor", lambda topics: topics.legit, legit_line,
        "Read the legit topic and print each payment: '[VISA] payment to: TO - N', "
        "'[MASTERCARD] payment to: TO - N', or '[ALERT] unable to process payments' for any other type.",
        argv,
    )
