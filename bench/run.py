"""`make bench`: throughput of the detector beside kafka-python's and Kafka's own ceilings.

    python -m bench.run [--count N] [--runs R]

Preloads N seeded payments into a fresh input topic, then runs each scenario
R times, alternating, each in its own process reading the whole topic with a
new consumer group:

  passthrough    raw kafka-python: poll, send the bytes to one topic, flush, commit
  seed_loop      the original tutorial's detector loop (iterator, json.loads,
                 is_suspicious, json.dumps, send, print), without its api_version pin
  detector_alo   our detector, --guarantee at-least-once, --quiet
  detector_eos   our detector, exactly-once, --quiet
  detector_x2    two exactly-once detector processes in one group

and Kafka's Java ProducerPerformance / ConsumerPerformance on the same cluster.
Then latency: an open-loop producer paced at half the detector's rate stamps
each payment with its scheduled time; a read_committed reader after the
(exactly-once) detector, and after a passthrough, records each record's
latency in a log-linear histogram: 60 s measured after a 10 s warm-up.
Throughput is records over the time from a process's first record to its
last; CPU is the process's user+system time over the same span (getrusage).
Prints a markdown table and writes results/bench-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud_pipeline.kafka_io import MAX_POLL_RECORDS
from fraud_pipeline.runtime import Progress as Bar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "bench-latest.json"
SCENARIOS = ("passthrough", "seed_loop", "detector_alo", "detector_eos", "detector_x2", "detector_rules")
RECOMMENDED = ROOT / "fraud_pipeline" / "rules" / "sets" / "recommended.yaml"
IDLE_S = 3.0
LATENCY_KINDS = ("detector", "detector_alo", "passthrough")
"""The detector exactly-once (its default) and at-least-once, and the two-hop passthrough."""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Progress:
    """What a scenario process measured."""

    records: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    cpu_at_first: float = 0.0

    def seen(self, n: int) -> None:
        now = time.time()
        if not self.records:
            self.first_at, self.cpu_at_first = now, _cpu_s()
        self.records += n
        self.last_at = now

    def result(self) -> dict[str, float]:
        return {"records": self.records, "first_at": self.first_at, "last_at": self.last_at,
                "cpu_s": _cpu_s() - self.cpu_at_first}


# ---------------------------------------------------------------------------
# Scenario processes


def child_passthrough(args: argparse.Namespace) -> Progress:
    from kafka import KafkaConsumer, KafkaProducer

    servers = args.bootstrap.split(",")
    consumer = KafkaConsumer(args.topic, bootstrap_servers=servers, group_id=args.group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=MAX_POLL_RECORDS)
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5, batch_size=256 * 1024)  # as the detector's
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


def child_seed_loop(args: argparse.Namespace) -> Progress:
    """The original tutorial's fraud_detector.py loop, reading from the start with a group."""
    from kafka import KafkaConsumer, KafkaProducer

    servers = args.bootstrap.split(",")
    consumer = KafkaConsumer(args.topic, bootstrap_servers=servers, group_id=args.group, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(IDLE_S * 1000))
    producer = KafkaProducer(bootstrap_servers=servers)

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
    from fraud_pipeline.config import Settings, TopicSettings
    from fraud_pipeline.detector import Detector, live_rules
    from fraud_pipeline.kafka_io import ensure_topics, pipeline_topics
    from fraud_pipeline.runtime import Summary, setup_logging
    from fraud_pipeline.stage import run_stage

    setup_logging("bench")
    settings = Settings(
        bootstrap_servers=tuple(args.bootstrap.split(",")),
        topics=TopicSettings(payments=args.topic, fraud=args.fraud, legit=args.legit, dead_letter=args.dlq,
                             rules=f"{args.topic}-rules", rules_rejected=f"{args.topic}-rules-rejected"),
        group_id=args.group, quiet=True, create_topics=False, guarantee=args.guarantee, idle_timeout_s=args.idle_seconds,
        rules_file=args.rules_file,
    )
    ensure_topics(settings, pipeline_topics(settings.topics, [settings.topics.rules, settings.topics.rules_rejected]))
    stop = threading.Event()
    progress = Progress()

    class Counted:
        def __init__(self, inner: Detector) -> None:
            self.inner = inner
            self.batch = 0
            self.begin_batch = inner.begin_batch
            self.partitions_assigned = inner.partitions_assigned

        def handle(self, record: Any) -> None:
            self.inner.handle(record)
            self.batch += 1

        def emit(self) -> None:
            self.inner.emit()
            progress.seen(self.batch)
            self.batch = 0
            if progress.records >= args.count:
                stop.set()

        def discard(self) -> None:
            self.inner.discard()
            self.batch = 0

    with live_rules(settings) as (rules, replay):
        run_stage(settings, name="fraud_detector", source_topic=args.topic, stop=stop,
                  summary=Summary("bench-detector", "payments"), transactional=True,
                  make_handler=lambda output, dead, lines: Counted(Detector(output, settings, dead, lines, rules, replay)))
    return progress


def child_paced(args: argparse.Namespace) -> Progress:
    """Open loop: payment i is due at start + i/rate and carries that time as TIMESTAMP_MS.

    A send that falls behind schedule keeps its scheduled stamp, so a stall
    shows up as latency instead of hiding as a slower rate.
    """
    from dataclasses import replace

    from kafka import KafkaProducer

    from fraud_pipeline.payment import encode, payment_stream

    producer = KafkaProducer(bootstrap_servers=args.bootstrap.split(","), acks="all", linger_ms=1)
    stream = payment_stream(seed=11)
    interval = 1.0 / args.rate
    start = time.time() + 0.5
    progress = Progress()
    try:
        for i in range(int(args.rate * args.seconds)):
            due = start + i * interval
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            payment = replace(next(stream), timestamp_ms=int(due * 1000))
            producer.send(args.topic, key=(payment.account or "").encode(), value=encode(payment))
            progress.seen(1)
        producer.flush()
    finally:
        producer.close()
    return progress


# ---------------------------------------------------------------------------
# The parent: preload, run, report


def preload(bootstrap: str, topic: str, count: int) -> int:
    from kafka import KafkaProducer

    from fraud_pipeline.payment import encode, payment_stream

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=20, batch_size=256 * 1024)
    bar = Bar("preload", count)
    stream = payment_stream(seed=7)
    size = 0
    try:
        for i in range(count):
            payment = next(stream)
            value = encode(payment)
            size += len(value)
            producer.send(topic, key=(payment.account or "").encode(), value=value)
            if (i + 1) % 10_000 == 0:
                bar(i + 1)
        producer.flush()
        bar.close()
    finally:
        producer.close()
    return size // max(count, 1)


def run_child(scenario: str, common: list[str], group: str, count: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result_file:
        result_path = result_file.name
    cmd = [sys.executable, "-m", "bench.run", "--child", scenario, "--group", group, "--count", str(count),
           "--result", result_path, *common]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"bench: {scenario} failed:\n{done.stderr[-3000:]}")
    try:
        return dict(json.loads(Path(result_path).read_text()))
    finally:
        os.unlink(result_path)


def measure(scenario: str, common: list[str], count: int) -> dict[str, float]:
    group = f"bench-{scenario}-{uuid.uuid4().hex[:8]}"
    if scenario == "detector_x2":
        with_args = [*common, "--guarantee", "at-least-once"]  # as (c): the ratio is the second process's gain
        results: list[dict[str, Any]] = [{}, {}]

        def one(i: int) -> None:
            results[i] = run_child("detector", with_args, group, count)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        busy = [r for r in results if r["records"]]  # a process that got no partition has no span
        records = sum(r["records"] for r in busy)
        span = max(r["last_at"] for r in busy) - min(r["first_at"] for r in busy)
        cpu = sum(r["cpu_s"] for r in results)
    else:
        child = {"detector_alo": "detector", "detector_eos": "detector"}.get(scenario, scenario)
        child = "detector" if scenario == "detector_rules" else child
        guarantee = {"detector_alo": ["--guarantee", "at-least-once"], "detector_eos": ["--guarantee", "exactly-once"],
                     "detector_rules": ["--guarantee", "at-least-once", "--rules-file", str(RECOMMENDED)]}
        result = run_child(child, [*common, *guarantee.get(scenario, [])], group, count)
        records, span, cpu = result["records"], result["last_at"] - result["first_at"], result["cpu_s"]
    if records < count:
        raise SystemExit(f"bench: {scenario} read {records} of {count} records")
    return {"msgs_per_s": records / span, "cpu_us_per_msg": cpu * 1e6 / records}


def java_perf(bootstrap: str, topic: str, count: int, record_size: int) -> tuple[float, float]:
    """(producer records/s, consumer records/s) from Kafka's own perf tools."""
    classpath = subprocess.run([sys.executable, "-m", "fraud_pipeline.local_cluster", "classpath"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    produced = subprocess.run(
        ["java", "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(count), "--record-size", str(record_size), "--throughput", "-1",
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5"],
        capture_output=True, text=True, check=True,
    ).stdout
    producer_rate = float(re.findall(r"([\d.]+) records/sec", produced)[-1])
    consumed = subprocess.run(
        ["java", "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ConsumerPerformance", "--topic", topic,
         "--bootstrap-server", bootstrap, "--num-records", str(count), "--group", f"bench-java-{uuid.uuid4().hex[:8]}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    header = [h.strip() for h in consumed[0].split(",")]
    values = [v.strip() for v in consumed[-1].split(",")]
    return producer_rate, float(values[header.index("nMsg.sec")])


def java_latency(bootstrap: str, rate: float, seconds: float, record_size: int) -> dict[str, float]:
    """p50/p99/p99.9 ms of Kafka's Java producer, paced at ``rate`` with acks=all: the one-hop floor of this cluster."""
    topic = f"bench-java-lat-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 6})
    classpath = subprocess.run([sys.executable, "-m", "fraud_pipeline.local_cluster", "classpath"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    produced = subprocess.run(
        ["java", "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(int(rate * seconds)), "--record-size", str(record_size), "--throughput", str(int(rate)),
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=1"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    found = {key: float(value) for value, key in re.findall(r"(\d+) ms (50th|99th|99\.9th)", produced)}
    return {"p50_ms": found["50th"], "p99_ms": found["99th"], "p999_ms": found["99.9th"]}


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


def latency_run(bootstrap: str, kind: str, rate: float, seconds: float, warmup: float = 10.0) -> Histogram:
    """Producer -> (detector | passthrough) -> a read_committed reader that records each record's latency."""
    from kafka import KafkaConsumer

    run_id = uuid.uuid4().hex[:8]
    names = {"in": f"lat-in-{run_id}", "out": f"lat-out-{run_id}", "fraud": f"lat-fraud-{run_id}",
             "legit": f"lat-legit-{run_id}", "dlq": f"lat-dlq-{run_id}"}
    create_topics(bootstrap, {names["in"]: 6, names["out"]: 2, names["fraud"]: 2, names["legit"]: 2, names["dlq"]: 1})
    common = ["--bootstrap", bootstrap, "--topic", names["in"], "--out", names["out"], "--fraud", names["fraud"],
              "--legit", names["legit"], "--dlq", names["dlq"], "--count", str(10**9), "--result", os.devnull,
              "--idle-seconds", "60"]  # the stage waits for the producer; it is stopped at the end
    guarantee = {"detector": ["--guarantee", "exactly-once"], "detector_alo": ["--guarantee", "at-least-once"]}
    stage_cmd = [sys.executable, "-m", "bench.run", "--child", "passthrough" if kind == "passthrough" else "detector",
                 "--group", f"lat-{run_id}", *common, *guarantee.get(kind, [])]
    read_topics = [names["out"]] if kind == "passthrough" else [names["fraud"], names["legit"]]
    reader = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=f"lat-reader-{run_id}",
                           auto_offset_reset="earliest", isolation_level="read_committed")
    for topic in read_topics:  # metadata first: a member that joins without it is assigned nothing
        reader.partitions_for_topic(topic)
    reader.subscribe(read_topics)
    stage = subprocess.Popen(stage_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    histogram = Histogram()
    try:
        time.sleep(3)  # let the stage and the reader join their groups
        producer = subprocess.Popen(
            [sys.executable, "-m", "bench.run", "--child", "paced", *common, "--rate", str(rate),
             "--seconds", str(warmup + seconds)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        begin = time.time() + 0.5 + warmup
        end = begin + seconds
        bar = Bar(f"latency {kind}", int(warmup + seconds))
        last_tick = time.time()
        while producer.poll() is None or time.time() < end + 5:
            for records in reader.poll(timeout_ms=200).values():
                now_us = time.time_ns() // 1000
                for record in records:
                    due_ms = json.loads(record.value)["TIMESTAMP_MS"]
                    if begin * 1000 <= due_ms < end * 1000:
                        histogram.record(now_us - due_ms * 1000)
            if time.time() - last_tick >= 1:
                bar(min(int(time.time() - begin + warmup), int(warmup + seconds)), note=f"{histogram.total} measured")
                last_tick = time.time()
            if time.time() > end + 30:
                break
        bar.close()
    finally:
        stage.terminate()
        stage.wait(30)
        reader.close()
    if not histogram.total:
        raise SystemExit(f"bench: no latency measured for {kind}")
    return histogram


def create_topics(bootstrap: str, names: dict[str, int]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(name, partitions, 3, topic_configs={"min.insync.replicas": "2"})
                             for name, partitions in names.items()], wait_for_metadata=True)
    finally:
        admin.close()


def table(medians: dict[str, dict[str, float]], java: dict[str, float], ratios: dict[str, float]) -> str:
    """The throughput table and the goal ratios, in markdown."""
    lines = ["| scenario | msgs/s (median) | CPU µs/msg |", "| --- | ---: | ---: |"]
    for name, stats in medians.items():
        lines.append(f"| {name} | {stats['msgs_per_s']:,.0f} | {stats['cpu_us_per_msg']:,.1f} |")
    for name, rate in java.items():
        lines.append(f"| {name} (Java) | {rate:,.0f} | |")
    lines += ["", "| ratio | value | goal |", "| --- | ---: | ---: |"]
    goals = {"c/a": "≥ 0.85", "c/b": "≥ 3", "d/c": "≥ 0.7", "e/c": "≥ 1.4"}
    lines += [f"| {name} | {value:.2f} | {goals[name]} |" for name, value in ratios.items() if name in goals]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS",
                                                               "localhost:9091,localhost:9092,localhost:9093"))
    parser.add_argument("--count", type=int, default=200_000, help="payments preloaded and read per run (default 200000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario, alternating; the median counts (default 3)")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated scenarios to run, for a quick look: {', '.join(SCENARIOS)} "
                        "(default: all, with the Java tools; the ratios and the JSON need all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--latency-seconds", type=float, default=60.0,
                        help="measured seconds of each latency run, after a 10 s warm-up (default 60; 0 skips)")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="payments per second of the latency runs (default: half the detector's measured rate)")
    for name in ("group", "topic", "out", "fraud", "legit", "dlq", "result", "guarantee", "rules-file"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_S, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child = {"passthrough": child_passthrough, "seed_loop": child_seed_loop, "detector": child_detector,
                 "paced": child_paced}[args.child]
        Path(args.result).write_text(json.dumps(child(args).result()))
        return 0

    chosen = SCENARIOS if args.only is None else tuple(args.only.split(","))
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"bench-in-{run_id}", "out": f"bench-out-{run_id}", "fraud": f"bench-fraud-{run_id}",
              "legit": f"bench-legit-{run_id}", "dlq": f"bench-dlq-{run_id}", "java": f"bench-java-{run_id}"}
    create_topics(args.bootstrap, {topics["in"]: 6, topics["out"]: 6, topics["fraud"]: 2, topics["legit"]: 2,
                                   topics["dlq"]: 1, topics["java"]: 6})
    record_size = preload(args.bootstrap, topics["in"], args.count)
    common = ["--bootstrap", args.bootstrap, "--topic", topics["in"], "--out", topics["out"], "--fraud", topics["fraud"],
              "--legit", topics["legit"], "--dlq", topics["dlq"]]

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    bar = Bar("runs", args.runs * len(chosen) + (args.runs if args.only is None else 0))
    for run in range(args.runs):
        for name in random.Random(run).sample(chosen, len(chosen)):  # alternate, in a new order each round
            samples[name].append(measure(name, common, args.count))
            bar.step(note=f"{name}: {samples[name][-1]['msgs_per_s']:,.0f} msgs/s")
    if args.only is not None:
        bar.close()
        medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for name, runs in samples.items()}
        print(table(medians, {}, {}))
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
    ratios = {"c/a": rate["detector_alo"] / rate["passthrough"], "c/b": rate["detector_alo"] / rate["seed_loop"],
              "d/c": rate["detector_eos"] / rate["detector_alo"], "e/c": rate["detector_x2"] / rate["detector_alo"]}
    latency: dict[str, Histogram] = {}
    if args.latency_seconds > 0:
        rate_lat = args.latency_rate or rate["detector_alo"] / 2
        for kind in LATENCY_KINDS:
            latency[kind] = latency_run(args.bootstrap, kind, rate_lat, args.latency_seconds)
        floor = java_latency(args.bootstrap, rate_lat, min(args.latency_seconds, 30), record_size)
    print(table(medians, java, ratios))
    if latency:
        print(f"\n| latency at {rate_lat:,.0f} payments/s | p50 ms | p99 ms | p99.9 ms | max ms | records |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for kind, hist in latency.items():
            print(f"| {kind} | {hist.percentile_ms(50):.1f} | {hist.percentile_ms(99):.1f} | "
                  f"{hist.percentile_ms(99.9):.1f} | {hist.max_us / 1000:.1f} | {hist.total:,} |")
        print(f"| Kafka's Java producer, one hop, acks=all (the cluster's floor) | {floor['p50_ms']:.1f} | "
              f"{floor['p99_ms']:.1f} | {floor['p999_ms']:.1f} | | |")
        base = latency["passthrough"].percentile_ms(99)
        ratios["p99/passthrough_p99"] = latency["detector"].percentile_ms(99) / base
        ratios["alo_p99/passthrough_p99"] = latency["detector_alo"].percentile_ms(99) / base
        print(f"\np99 / passthrough p99: detector {ratios['p99/passthrough_p99']:.2f}, "
              f"detector at-least-once {ratios['alo_p99/passthrough_p99']:.2f} (goal ≤ 1.5; p99 goal ≤ 25 ms)")
    report = {
        "passthrough_msgs_per_s": rate["passthrough"],
        "seed_loop_msgs_per_s": rate["seed_loop"],
        "detector_alo_msgs_per_s": rate["detector_alo"],
        "detector_eos_msgs_per_s": rate["detector_eos"],
        "detector_x2_msgs_per_s": rate["detector_x2"],
        "detector_rules_msgs_per_s": rate["detector_rules"],
        "kafka_producer_perf_msgs_per_s": java["kafka_producer_perf"],
        "kafka_consumer_perf_msgs_per_s": java["kafka_consumer_perf"],
        **({"latency_p50_ms": latency["detector"].percentile_ms(50),
            "latency_p99_ms": latency["detector"].percentile_ms(99),
            "latency_p999_ms": latency["detector"].percentile_ms(99.9),
            "latency_max_ms": latency["detector"].max_us / 1000,
            "detector_alo_latency_p50_ms": latency["detector_alo"].percentile_ms(50),
            "detector_alo_latency_p99_ms": latency["detector_alo"].percentile_ms(99),
            "passthrough_latency_p50_ms": latency["passthrough"].percentile_ms(50),
            "passthrough_latency_p99_ms": latency["passthrough"].percentile_ms(99),
            "latency_rate_per_s": rate_lat,
            "kafka_producer_perf_latency_p50_ms": floor["p50_ms"],
            "kafka_producer_perf_latency_p99_ms": floor["p99_ms"]} if latency else {}),
        "cpu_us_per_msg": {name: stats["cpu_us_per_msg"] for name, stats in medians.items()},
        "ratios": ratios,
        "samples": samples,
        "count": args.count,
        "runs": args.runs,
        "record_bytes": record_size,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
