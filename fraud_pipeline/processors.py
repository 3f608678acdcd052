"""The fraud and legit processors: print the outcome of each routed payment.

The lines are the original tutorial's, byte for byte::

    [ALERT] fraud detected payment to: stranger - 42     (fraud topic, TO == "stranger")
    [PROCESSING BITCOIN] payment to: mom - 42            (fraud topic, any other TO)
    [VISA] payment to: me - 7                            (legit topic)
    [MASTERCARD] payment to: dad - 7                     (legit topic)
    [ALERT] unable to process payments                   (legit topic, any other type)

A payment the detector held for review (its rule set has a review threshold,
or the payment is on a review list) comes on the fraud topic too, and is
printed as such::

    [REVIEW] payment held for review to: stranger - 420

The fraud processor then prints the detector's reasons on an indented line
(``--no-reasons`` leaves them out; a payment routed without a decision, e.g. by
the original detector, has none)::

    [ALERT] fraud detected payment to: stranger - 900
        score 2 >= 1: large-to-stranger@1: TO == stranger and AMOUNT=900 >= 500; burst@1: count=6 in 60s > 5 (ACCOUNT=ACC00042)

Both read committed records only, so they never see a payment from an aborted
detector transaction.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from .clients import Record
from .config import Settings, TopicSettings, add_processor_arguments, build_parser, require
from .metrics import start as start_metrics
from .payment import MAX_RECORD_BYTES, Payment
from .rules import Decision
from .rules.lists import REVIEWED
from .runtime import Summary, cli_main, run_cli
from .stage import DeadLetters, LineBuffer, LineHandler, decode_or_reject, run_stage
from .topics import prepare_topics

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
ROUTED_MAX_BYTES = 2 * MAX_RECORD_BYTES
"""A routed payment is the input (at most MAX_RECORD_BYTES) plus the detector's decision."""


def fraud_line(payment: Payment) -> str:
    """What the original fraud_processor printed for a payment; a payment held for review says so."""
    decision = payment.decision
    if decision is not None and decision.get("outcome") == REVIEWED:
        return _UNPRINTABLE.sub("?", f"[REVIEW] payment held for review to: {payment.to} - {payment.amount}")
    if payment.to == "stranger":
        return f"[ALERT] fraud detected payment to: {payment.to} - {payment.amount}"
    return f"[PROCESSING BITCOIN] payment to: {payment.to} - {payment.amount}"


def reasons_line(payment: Payment) -> str | None:
    """The detector's decision on a routed payment as one indented line; None without one."""
    decision = Decision.from_dict(payment.decision) if payment.decision is not None else None
    if decision is None:
        return None
    score = decision.score
    if score >= decision.threshold - 1e-9:
        versus = f">= {decision.threshold:g}"
    elif decision.review_threshold is not None:
        review = decision.review_threshold
        versus = f">= review {review:g}" if score >= review - 1e-9 else f"< review {review:g}"
    else:
        versus = f"< {decision.threshold:g}"
    fired = "; ".join(fired.describe() for fired in decision.fired) or "no rule fired"
    listed = "".join(f"; {hit.describe()}" for hit in decision.listed)
    # The decision comes from the record: nothing in it may break the line.
    return _UNPRINTABLE.sub("?", f"    score {score:g} {versus}: {fired}{listed}")


def explained_fraud_line(payment: Payment) -> str:
    """The original fraud line, then the reasons line when the payment carries a decision."""
    reasons = reasons_line(payment)
    line = fraud_line(payment)
    return line if reasons is None else f"{line}\n{reasons}"


def legit_line(payment: Payment) -> str:
    """What the original legit_processor printed for a payment."""
    if payment.payment_type == "VISA":
        return f"[VISA] payment to: {payment.to} - {payment.amount}"
    if payment.payment_type == "MASTERCARD":
        return f"[MASTERCARD] payment to: {payment.to} - {payment.amount}"
    return "[ALERT] unable to process payments"


class Processor(LineHandler):
    """Prints one line per payment; unreadable records go to the dead-letter topic.

    Any PAYMENT_TYPE is accepted here, so the legit processor can print the
    original's "unable to process" line for a type it does not know.
    At-least-once: lines are printed before the offsets are committed.
    """

    def __init__(self, line: Callable[[Payment], str], dead_letters: DeadLetters, lines: LineBuffer) -> None:
        super().__init__(lines)
        self._line = line
        self._dead_letters = dead_letters

    def handle(self, record: Record) -> None:
        payment = decode_or_reject(record, self._dead_letters, self._lines, known_types_only=False, max_bytes=ROUTED_MAX_BYTES)
        if payment is None:
            return
        text = self._line(payment)
        # "[VISA] payment to: ..." counts as VISA; "[ALERT] ..." as ALERT
        self._lines.add(text[1 : text.index("]")], text)


def _run_processor(
    name: str, topic: str, line: Callable[[Payment], str], settings: Settings, stop: threading.Event
) -> int:
    prepare_topics(settings, reads=[topic], writes=[settings.topics.dead_letter])
    return run_stage(
        settings, name=name, source_topic=topic, stop=stop, summary=Summary(name, "payments"),
        make_handler=lambda output, dead_letters, lines: Processor(line, dead_letters, lines),
        metrics=start_metrics(name, settings.metrics),
    )


def _processor_main(
    name: str, topic_of: Callable[[TopicSettings], str], line_of: Callable[[Settings], Callable[[Payment], str]],
    description: str, argv: list[str] | None, *, reasons_flag: bool = False,
) -> int:
    kind = name.split("_")[0]  # "fraud" or "legit"
    parser = build_parser(name, description, consumes=f"the {kind} topic", default_group=name.replace("_", "-"))
    if reasons_flag:
        add_processor_arguments(parser)
    return run_cli(name, parser.parse_args(argv), lambda s, stop: _run_processor(name, topic_of(s.topics), line_of(s), s, stop))


def _fraud_line_of(settings: Settings) -> Callable[[Payment], str]:
    """The fraud processor's line: with the reasons unless ``--no-reasons``."""
    return explained_fraud_line if require(settings.processor, "processor").reasons else fraud_line


@cli_main
def fraud_main(argv: list[str] | None = None) -> int:
    return _processor_main(
        "fraud_processor", lambda topics: topics.fraud, _fraud_line_of,
        "Read the fraud topic and print each payment: '[ALERT] fraud detected payment to: stranger - N' "
        "for payments to a stranger, '[PROCESSING BITCOIN] payment to: TO - N' otherwise, then the "
        "detector's score and the rules that fired on an indented line.",
        argv, reasons_flag=True,
    )


@cli_main
def legit_main(argv: list[str] | None = None) -> int:
    return _processor_main(
        "legit_processor", lambda topics: topics.legit, lambda s: legit_line,
        "Read the legit topic and print each payment: '[VISA] payment to: TO - N', "
        "'[MASTERCARD] payment to: TO - N', or '[ALERT] unable to process payments' for any other type.",
        argv,
    )
