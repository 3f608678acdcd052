"""Nothing lost, nothing twice: the detector under kill -9, broker loss and SIGTERM.

Each test streams seeded payments (so every PAYMENT_ID is known in advance),
hurts the pipeline while they flow, then reads fraud + legit + dead letters as
the processors do (read_committed) and counts each id. CHAOS_BROKER=N makes
the broker test kill node N instead of the one its seed picks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from tests.integration.conftest import ROOT, Pipeline, read_topic, summary_count
from tests.integration.test_pipeline import expected_payments

pytestmark = pytest.mark.chaos

COUNT = 20_000
RATE = "2500"


def verdict(pipeline: Pipeline, seed: int, count: int = COUNT) -> tuple[int, int, int, Counter[str]]:
    """(lost, duplicated, dead-lettered, per-id counts) over fraud + legit, read_committed."""
    expected = {p.payment_id for p in expected_payments(seed, count, 1000)}
    routed = read_topic(pipeline.bootstrap, pipeline.topics.fraud) + read_topic(pipeline.bootstrap, pipeline.topics.legit)
    seen = Counter(json.loads(r.value)["PAYMENT_ID"] for r in routed)
    dead = len(read_topic(pipeline.bootstrap, pipeline.topics.dead_letter))
    lost = len(expected - set(seen))
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    assert set(seen) <= expected, "ids that were never sent"
    return lost, duplicated, dead, seen


def start_producer(pipeline: Pipeline, seed: int, rate: str = RATE) -> subprocess.Popen[str]:
    return pipeline.start("payment_producer", "--count", str(COUNT), "--rate", rate, "--seed", str(seed), "--quiet")


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 240) -> str:
    """Wait for a script to exit 0; on a timeout kill it and show what it logged."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"{what} still running after {timeout:.0f}s; its log ends:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{stderr[-3000:]}"
    return stderr


def kill_detector_repeatedly(pipeline: Pipeline, guarantee: str, seed: int, figures: dict[str, Any]) -> None:
    rng = random.Random(seed)
    producer = start_producer(pipeline, seed, rate="600")  # ~33 s of flow: room for three kills
    args = ("--quiet", "--idle-timeout", "10", "--guarantee", guarantee)
    detector = pipeline.start("fraud_detector", *args, group="detector")
    kills, committed, killed_at = 0, 0, []
    for _ in range(3):
        # kill only once this detector is committing, at a random moment after that
        committed = wait_for_progress(pipeline, "detector", committed, detector)
        time.sleep(rng.uniform(0.05, 1.5))
        assert detector.poll() is None, f"detector died on its own:\n{detector.communicate()[1][-3000:]}"
        detector.send_signal(signal.SIGKILL)
        detector.communicate(timeout=10)
        kills += 1
        killed_at.append(committed)
        detector = pipeline.start("fraud_detector", *args, group="detector")
    assert producer.poll() is None, "the payments stopped flowing before the third kill"
    finish(producer, "payment_producer")
    finish(detector, "fraud_detector")
    lost, duplicated, dead, _ = verdict(pipeline, seed)
    aborted = (
        len(read_topic(pipeline.bootstrap, pipeline.topics.fraud, committed_only=False))
        + len(read_topic(pipeline.bootstrap, pipeline.topics.legit, committed_only=False))
        - COUNT - duplicated
    )
    figures.update(test=f"detector kill -9 ({guarantee})", sent=COUNT, kills=kills, killed_after_committed=killed_at, lost=lost,
                   duplicated=duplicated, dead_lettered=dead, aborted_records=aborted)
    assert lost == 0
    assert dead == 0
    if guarantee == "exactly-once":
        assert duplicated == 0


def test_detector_kill9_exactly_once(pipeline: Pipeline, figures: dict[str, Any]) -> None:
    kill_detector_repeatedly(pipeline, "exactly-once", seed=101, figures=figures)


def test_detector_kill9_at_least_once(pipeline: Pipeline, figures: dict[str, Any]) -> None:
    kill_detector_repeatedly(pipeline, "at-least-once", seed=202, figures=figures)


def cluster_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fraud_pipeline.local_cluster", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert not check or done.returncode == 0, f"local_cluster {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def test_broker_loss_mid_stream(pipeline: Pipeline, figures: dict[str, Any]) -> None:
    status = cluster_command("status", check=False)
    assert status.returncode == 0, f"this test kills brokers of the project's own cluster (make cluster-up):\n{status.stdout}"
    seed = 303
    node = int(os.environ.get("CHAOS_BROKER", "0")) or random.Random(seed).choice([1, 2, 3])
    producer = start_producer(pipeline, seed, rate="1500")
    detector = pipeline.start("fraud_detector", "--quiet", "--idle-timeout", "20", group="detector")
    time.sleep(4)
    cluster_command("kill", str(node))
    time.sleep(6)
    assert producer.poll() is None and detector.poll() is None, "a client gave up while a broker was down"
    restarted = cluster_command("up").stdout
    finish(producer, "payment_producer")
    detector_log = finish(detector, "fraud_detector")
    lost, duplicated, dead, _ = verdict(pipeline, seed)
    figures.update(test=f"broker {node} kill -9 and restart", sent=COUNT, lost=lost, duplicated=duplicated,
                   dead_lettered=dead, detector_batches_retried=detector_log.count("rolling back"),
                   restart=restarted.strip().splitlines()[-1])
    assert (lost, duplicated, dead) == (0, 0, 0)
    assert summary_count(detector_log, "fraud_detector") == COUNT


def wait_for_progress(pipeline: Pipeline, group: str, above: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> int:
    """Wait until the group's committed offsets pass ``above``; return them."""
    deadline = time.monotonic() + timeout_s
    while (committed := committed_total(pipeline, group)) <= above:
        assert proc.poll() is None, f"detector exited:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no progress past {above} committed payments in {timeout_s:.0f}s"
        time.sleep(0.2)
    return committed


def committed_total(pipeline: Pipeline, group: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=pipeline.bootstrap.split(","), group_id=pipeline.group(group),
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(pipeline.topics.payments, p)
                      for p in consumer.partitions_for_topic(pipeline.topics.payments) or ()]
        return sum(consumer.committed(tp) or 0 for tp in partitions)
    finally:
        consumer.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_and_commits(pipeline: Pipeline, figures: dict[str, Any], sig: signal.Signals) -> None:
    seed = 404
    pipeline.run("payment_producer", "--count", str(COUNT), "--rate", "0", "--seed", str(seed), "--quiet")
    detector = pipeline.start("fraud_detector", "--quiet", group="detector")
    wait_for_progress(pipeline, "detector", 0, detector)  # stop it mid-stream, once it is committing
    sent_at = time.monotonic()
    detector.send_signal(sig)
    stderr = finish(detector, "fraud_detector", timeout=30)
    stop_s = time.monotonic() - sent_at
    handled = summary_count(stderr, "fraud_detector")
    committed = committed_total(pipeline, "detector")
    assert 0 < handled < COUNT, "stop the detector mid-stream"
    assert committed == handled, "every payment handled before the stop is committed, no more"
    # a second run finishes the stream: together, each payment exactly once
    rest = pipeline.run("fraud_detector", "--quiet", "--idle-timeout", "5", group="detector")
    lost, duplicated, dead, _ = verdict(pipeline, seed)
    figures.update(test=f"{sig.name} mid-stream", sent=COUNT, stop_seconds=round(stop_s, 2), before_stop=handled,
                   after_restart=summary_count(rest.stderr, "fraud_detector"), lost=lost, duplicated=duplicated)
    assert stop_s < 5
    assert (lost, duplicated, dead) == (0, 0, 0)
