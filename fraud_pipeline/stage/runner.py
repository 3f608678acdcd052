"""One stage process (detector or processor): its clients, its delivery, the loop, its exit status."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext

from ..clients import FatalError
from ..config import EXACTLY_ONCE, Settings, require
from ..errors import PipelineError
from ..kafka_io import make_consumer, make_producer
from ..metrics import Metrics
from ..runtime import Summary, instance_slot
from .delivery import AtLeastOnce, Delivery, ExactlyOnce, FlushedAtLeastOnce
from .handler import HandlerFactory, LineBuffer
from .loop import Assignment, run_consumer
from .output import DeadLetters, Output

# The package's logger, "fraud_pipeline.stage", for every module of it: log lines name it as before the split.
log = logging.getLogger(__package__)


def run_stage(
    settings: Settings,
    *,
    name: str,
    source_topic: str,
    stop: threading.Event,
    summary: Summary,
    make_handler: HandlerFactory,
    metrics: Metrics | None = None,
) -> int:
    """Run one consuming stage (detector or processor) until stopped or idle; return the exit status.

    The caller prepares the topics (topics.prepare_topics) first.

    A stage with a ``delivery`` section (the detector) follows its guarantee;
    the others are at-least-once. 0 on a clean stop, 1 on a failure (nothing committed past it).
    """
    stage_log = logging.getLogger(name)
    if metrics is not None:
        metrics.outcomes = summary.counts
    consuming = require(settings.consumer, "consumer")
    interval_ms = consuming.commit_interval_ms
    delivery_settings = settings.delivery
    exactly_once = delivery_settings is not None and delivery_settings.guarantee == EXACTLY_ONCE
    given_id = delivery_settings.transactional_id if delivery_settings is not None else None
    needs_slot = exactly_once and given_id is None
    with instance_slot(consuming.group_id or name) if needs_slot else nullcontext("") as slot:
        transactional_id = (given_id or f"{consuming.group_id}-{slot}") if exactly_once else None
        output = Output(make_producer(settings, name, transactional_id))
        try:
            buffer = LineBuffer(summary, consuming.quiet)
            handler = make_handler(output, DeadLetters(output, settings.topics.dead_letter, name), buffer)
            assignment = Assignment(handler)
            consumer = make_consumer(settings, source_topic, name, assignment.assigned, assignment.revoked, assignment.lost)
            # What exists now (modules, clients, rules) lives until the end: keep it out of every
            # garbage collection, which then only walks the short-lived per-record objects.
            gc.collect()
            gc.freeze()
            try:
                try:
                    delivery: Delivery = (
                        ExactlyOnce(output, lambda: make_producer(settings, name, transactional_id),
                                    metrics.transactions if metrics is not None else None,
                                    metrics.transaction_seconds if metrics is not None else None,
                                    trace=delivery_settings is not None and delivery_settings.trace_transactions)
                        if exactly_once
                        else AtLeastOnce(output) if output.producer.reports_each_send else FlushedAtLeastOnce(output)
                    )
                except FatalError as exc:
                    raise PipelineError(f"transactions are not allowed for this detector: {exc}") from exc
                stage_log.info(
                    "reading %s as group %s from %s (%s) with %s; %s%s, commit every %d ms; dead letters to %s",
                    source_topic, consuming.group_id, ",".join(settings.connection.bootstrap_servers),
                    settings.connection.security.describe(), settings.connection.client, delivery.name,
                    f" (transactional id {transactional_id})" if transactional_id else "", interval_ms,
                    settings.topics.dead_letter,
                )
                reason = run_consumer(
                    consumer, handler, delivery, stop=stop, idle_timeout_s=consuming.idle_timeout_s, assignment=assignment,
                    commit_interval_s=interval_ms / 1000, commit_records=consuming.commit_records,
                    metrics=metrics if metrics is not None and metrics.enabled else None,
                )
            except PipelineError as exc:
                stage_log.error("%s; stopping without committing the current batch", exc)
                summary.print("failed")
                return 1
            finally:
                _close_within(consumer.close, "consumer")
        finally:
            _close_within(output.producer.close, "producer")
    summary.print(reason)
    return 0


CLOSE_TIMEOUT_S = 30.0
"""The longest a client's close may hold up the exit: what it does then (leave the group) loses nothing."""


def _close_within(close: Callable[[], None], what: str) -> None:
    """Close a client, giving up waiting after CLOSE_TIMEOUT_S.

    Everything handled is committed before the close; librdkafka's consumer
    close can block on a group coordinator that moved (seen after a broker
    restart), and a stop request must still end the process.
    """
    closer = threading.Thread(target=close, name=f"close-{what}", daemon=True)
    closer.start()
    closer.join(CLOSE_TIMEOUT_S)
    if closer.is_alive():
        log.warning("the %s did not close within %.0fs; exiting without waiting for it", what, CLOSE_TIMEOUT_S)
