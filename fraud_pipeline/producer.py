"""The payment producer: a stream of random payments to the payments topic.

Prints each payment as the original tutorial did (the Python dict of its five
fields). Records are keyed by the sender account, so one account's payments
stay in order on one partition.

Every mode sends the entity fields too (CARD, DEVICE, IP, and MERCHANT for
card payments; fraud_pipeline.payment.generate): the original's scripts read
only the five original fields, so they read these messages as they did, and
the printed line (those five fields) is the same; the entities come from a
second random stream, so a seed's five fields are those it gave before.

With ``--scenarios`` the stream also carries labelled fraud scenarios
(fraud_pipeline.scenarios); each record then has the headers ``fraud.label``
(``fraud`` or ``legit``) and ``fraud.scenario``: the ground truth for a
backtest, which the detector never reads. When the mix has scenarios of
regulars, the regulars' history (weeks of payments stamped in the past,
scenario ``history``) is sent first, unpaced; ``--count`` counts it too
(about 600 payments with the default 1000 accounts).
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Iterator
from itertools import islice
from typing import TextIO

from .clients import Producer
from .config import ProducerSettings, Settings, build_parser, require
from .errors import PipelineError
from .kafka_io import make_producer
from .metrics import start as start_metrics
from .payment import Payment, encode, payment_stream
from .runtime import Summary, cli_main, run_cli
from .scenarios import HISTORY, LABEL_HEADER, SCENARIO_HEADER, labelled_stream, parse_mix
from .stage import BatchError, Output
from .topics import prepare_topics

NAME = "payment_producer"


def produce(
    producer: Producer,
    settings: Settings,
    stop: threading.Event,
    summary: Summary,
    out: TextIO = sys.stdout,
) -> str:
    """Send payments until ``settings.producer.count`` is reached or ``stop`` is set; return why it ended.

    Paced at ``settings.producer.rate`` per second on a fixed schedule (0: no pacing).
    Raises BatchError as soon as a send fails: never a silent drop.
    """
    options = require(settings.producer, "producer")
    output = Output(producer)
    interval = 1.0 / options.rate if options.rate > 0 else 0.0
    next_send = time.monotonic()
    reason = "count reached"
    for payment, headers, paced in islice(_stream(options), options.count):
        if interval and paced:
            delay = next_send - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            next_send += interval
        if stop.is_set():
            break
        key = payment.account.encode("utf-8") if payment.account else None
        output.send(settings.topics.payments, key, encode(payment), headers)
        output.check()
        summary.add(payment.payment_type)
        if not options.quiet:
            print(payment.original_fields(), file=out)
    if stop.is_set():
        reason = "stopped"
    output.flush()
    out.flush()
    return reason


def _stream(options: ProducerSettings) -> Iterator[tuple[Payment, list[tuple[str, bytes]] | None, bool]]:
    """The payments to send, each with its record headers (the labels, with scenarios) and whether it is paced.

    The regulars' history (scenarios of regulars only) is stamped in the past
    and sent first, unpaced.
    """
    mix = parse_mix(options.scenarios)
    if not mix:  # the original random stream, as before, with CARD, DEVICE, IP and MERCHANT
        yield from ((payment, None, True) for payment in payment_stream(options.seed, options.accounts))
        return
    for item in labelled_stream(options.seed, options.accounts, mix, lambda: datetime.datetime.now(datetime.UTC)):
        headers = [(LABEL_HEADER, item.label.encode()), (SCENARIO_HEADER, item.scenario.encode())]
        yield item.payment, headers, item.scenario != HISTORY


def run(settings: Settings, stop: threading.Event) -> int:
    try:
        parse_mix(require(settings.producer, "producer").scenarios)
    except ValueError as exc:
        raise PipelineError(f"--scenarios: {exc}") from None
    prepare_topics(settings, writes=[settings.topics.payments])
    summary = Summary(NAME, "payments sent")
    start_metrics(NAME, settings.metrics).outcomes = summary.counts
    producer = make_producer(settings, NAME)
    try:
        reason = produce(producer, settings, stop, summary)
    except BatchError as exc:
        summary.print("failed")
        raise PipelineError(f"{NAME}: {exc}; stopping (payments after the failed one were not sent)") from exc
    finally:
        producer.close()
    summary.print(reason)
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        NAME,
        "Send random payments (DATE and TIME in Asia/Seoul, PAYMENT_TYPE, AMOUNT, TO, plus PAYMENT_ID, "
        "ACCOUNT, TIMESTAMP_MS, CARD, DEVICE, IP and MERCHANT) to the payments topic, keyed by sender account, and print each one.",
        consumes=None,
        producer=True,
    )
    return run_cli(NAME, parser.parse_args(argv), run)
