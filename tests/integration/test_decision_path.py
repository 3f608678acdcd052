"""Same payments, same decisions: three detector groups on the real cluster, one killed, and the backtest agree."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.structs import TopicPartition

from fraud_pipeline.backtest import generated
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.kafka_io import read_span
from fraud_pipeline.payment import encode
from fraud_pipeline.rules import load_ruleset
from tests.decisions import differences, expected, routed
from tests.integration.conftest import ROOT, Pipeline, Script, fresh_pipeline, kafka_python_connection

RECOMMENDED = ROOT / "fraud_pipeline" / "rules" / "sets" / "recommended.yaml"
COUNT = 20_000


def routed_so_far(bootstrap: str, topics: list[str]) -> int:
    """Records in the routed topics (end offsets: transaction markers included), without reading them.

    Asked again while the brokers are too busy to answer in time (three detector groups run beside it).
    """
    for _ in range(30):
        try:
            consumer = KafkaConsumer(**kafka_python_connection(bootstrap))
        except kerr.KafkaError:
            time.sleep(1)
            continue
        try:
            partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
            return sum(consumer.end_offsets(partitions).values()) if partitions else 0
        except kerr.KafkaError:
            time.sleep(1)
        finally:
            consumer.close()
    raise AssertionError(f"the end offsets of {topics} could not be read in 30 attempts")


BAD_RECORDS = (b"{not json", b"", b'{"PAYMENT_TYPE": "BITCOIN"}',
               b'{"DATE": "01/22/2023", "TIME": "11:50:50", "PAYMENT_TYPE": "VISA", "AMOUNT": "many", "TO": "x"}',
               b"\xff\xfe", b"[1, 2, 3]")
"""Values no stage can read as a payment: not JSON, empty, fields missing or of the wrong type, not UTF-8, not an object."""


def detector_args(pipeline: Pipeline, name: str, tmp_path: Path, *extra: str) -> tuple[str, ...]:
    """A detector of group ``name`` with the recommended rules, its own state folder and routed topics."""
    return ("--rules", str(RECOMMENDED), "--quiet", "--state-dir", str(tmp_path / name),
            "--fraud-topic", f"{pipeline.topics.fraud}-{name}", "--legit-topic", f"{pipeline.topics.legit}-{name}",
            "--dead-letter-topic", f"{pipeline.topics.dead_letter}-{name}", *extra)


def detector(pipeline: Pipeline, name: str, client: str, tmp_path: Path, *extra: str) -> Any:
    return pipeline.start("fraud_detector", *detector_args(pipeline, name, tmp_path, *extra), group=name, client=client)


def test_three_groups_and_the_backtest_decide_every_payment_alike(cluster: str, tmp_path: Path,
                                                                   figures: list[dict[str, Any]]) -> None:
    with fresh_pipeline(cluster, "kafka-python") as pipeline:
        # The backtest's seeded scenarios on a simulated clock (20 payments/s over 2,000 accounts: every pattern of the
        # recommended rules occurs), sent at once, keyed by account as the producer keys them.
        # Among them, records no stage can read, each keyed like a payment: dead-lettered by the anchor, once per
        # group, and the payments around them decided as if they were not there.
        producer = KafkaProducer(**kafka_python_connection(cluster), acks="all")
        bad = 0
        try:
            for n, example in enumerate(islice(generated(COUNT, 7, "default", 20, 2000), COUNT)):
                payment = example.payment
                key = (payment.account or "").encode()
                if n % 1000 == 500:
                    producer.send(pipeline.topics.payments, key=key, value=BAD_RECORDS[bad % len(BAD_RECORDS)])
                    bad += 1
                producer.send(pipeline.topics.payments, key=key, value=encode(payment))
            producer.flush()
        finally:
            producer.close()
        outputs = {name: [f"{pipeline.topics.fraud}-{name}", f"{pipeline.topics.legit}-{name}"]
                   for name in ("kafka-python", "confluent", "killed")}
        runs = [detector(pipeline, name, client, tmp_path, "--idle-timeout", "8")
                for name, client in (("kafka-python", "kafka-python"), ("confluent", "confluent"))]
        # The third group, on kafka-python, killed -9 twice while it routes, then run to the end.
        kills = []
        for _ in range(2):
            before = routed_so_far(cluster, outputs["killed"])
            doomed = detector(pipeline, "killed", "kafka-python", tmp_path)
            deadline = time.monotonic() + 120
            while routed_so_far(cluster, outputs["killed"]) < before + 2000:
                assert doomed.poll() is None and time.monotonic() < deadline, doomed.stderr_so_far()[-3000:]
                time.sleep(0.5)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(30)
            kills.append(routed_so_far(cluster, outputs["killed"]))
        assert kills[-1] < COUNT, f"the second kill came after the end: {kills}"  # mid-stream, not after it
        runs.append(detector(pipeline, "killed", "kafka-python", tmp_path, "--idle-timeout", "8"))
        for run in runs:
            _, stderr = run.communicate(timeout=300)
            assert run.returncode == 0, stderr[-3000:]
            keys = [line for line in stderr.splitlines() if line.startswith("fraud_detector[keys]:")]
            assert keys and not any(" late" in line for line in keys), keys  # no probe came after its marker

        wanted = expected(cluster, pipeline.topics.payments, load_ruleset(RECOMMENDED), 6)
        assert len(wanted) == COUNT
        outcomes = {outcome for outcome, _, _ in wanted.values()}
        assert outcomes == {"approve", "decline"}, outcomes
        fired = Counter(rule for _, _, rules in wanted.values() for rule in rules)
        assert all(fired[f"{rule.id}@{rule.version}"] > 0 for rule in load_ruleset(RECOMMENDED).rules), fired  # every rule
        key_rules = fired["device-card-testing@1"] + fired["mule-fan-in@1"]
        found = {name: routed(cluster, topics) for name, topics in outputs.items()}
        for name, decisions in found.items():
            differ = differences(decisions, wanted)
            assert not differ, f"{name}: {len(differ)} payments routed other than once or decided otherwise, e.g. " \
                               f"{list(differ.items())[:3]}"
            dead = sorted(record.value or b"" for record in read_span(Settings(ConnectionSettings(tuple(cluster.split(",")))),
                                                                      f"{pipeline.topics.dead_letter}-{name}"))
            assert dead == sorted(BAD_RECORDS[n % len(BAD_RECORDS)] for n in range(bad)), f"{name}: dead letters {dead}"
        figures.append(dict(test="one decision path: 3 groups (kafka-python, confluent, killed -9 twice) and the backtest",
                            payments=COUNT, unreadable=bad, declined=sum(1 for o, _, _ in wanted.values() if o == "decline"),
                            key_rule_payments=key_rules, routed_at_kills=kills, differing=0))


def wait_until_reading(run: Any, stages: int = 1) -> None:
    """Wait until ``stages`` of the detector's stages are reading (their "reading ..." lines), within 60 s."""
    deadline = time.monotonic() + 60
    while run.stderr_so_far().count(" reading ") < stages:
        assert run.poll() is None and time.monotonic() < deadline, run.stderr_so_far()[-3000:]
        time.sleep(0.2)


class PacedSender:
    """payment_producer.py sending ``count`` seeded scenario payments at 1,000 a second, each stamped when sent (as
    a payments system does), in a process of its own.

    Not a thread of the test's process: there its records waited for the interpreter lock behind the test's own
    polling, and on a loaded machine some reached the brokers more than 2 s after they were stamped. A payments
    partition read to its end and quiet for half a second meanwhile gets a marker that follows the wall clock,
    2 s behind it (topology.anchor), so such a payment came late and was decided in the order it came, not the
    backtest's (seen in CI, the detector's summary saying "2 late"). 1,000 a second: the 20 s it takes leave the
    detector time to route its first thousands before the last is sent, where the tests stop or fail it.
    """

    def __init__(self, pipeline: Pipeline, count: int) -> None:
        self._pipeline = pipeline
        self._count = count
        self._proc: Any = None

    def start(self) -> None:
        self._proc = self._pipeline.start("payment_producer", "--count", str(self._count), "--rate", "1000", "--seed", "11",
                                          "--accounts", "2000", "--scenarios", "default", "--quiet")

    def sent(self) -> int:
        """The payments in the topic so far."""
        return routed_so_far(self._pipeline.bootstrap, [self._pipeline.topics.payments])

    def join(self, timeout_s: float) -> None:
        _, stderr = self._proc.communicate(timeout=timeout_s)
        assert self._proc.returncode == 0, stderr[-3000:]


def none_late(*logs: str) -> None:
    """No probe came to a key partition after its marker (the detectors' "[keys]" summaries): a late payment is
    decided in the order it came, not the backtest's."""
    keys = [line for log in logs for line in log.splitlines() if line.startswith("fraud_detector[keys]:")]
    assert keys and not any(" late" in line for line in keys), keys


def decided_as_the_backtest(cluster: str, pipeline: Pipeline, outputs: list[str], count: int) -> None:
    """Each of the ``count`` payments routed once to ``outputs``, decided as the backtest decides the payments topic."""
    wanted = expected(cluster, pipeline.topics.payments, load_ruleset(RECOMMENDED), 6)
    assert len(wanted) == count
    differ = differences(routed(cluster, outputs), wanted)
    assert not differ, f"{len(differ)} payments routed other than once or decided otherwise, e.g. {list(differ.items())[:3]}"


def test_a_damaged_state_store_is_rebuilt_from_its_changelog(cluster: str, tmp_path: Path,
                                                             figures: list[dict[str, Any]]) -> None:
    """A detector stopped mid-stream, every file of its stores garbled: the restart rebuilds each store from its
    changelog and decides every payment as the backtest does (the windows span the damage).

    Stopped mid-stream, not after an idle spell.
    """
    count = 20_000
    with fresh_pipeline(cluster, "kafka-python") as pipeline:
        outputs = [f"{pipeline.topics.fraud}-damaged", f"{pipeline.topics.legit}-damaged"]
        sender = PacedSender(pipeline, count)
        run = detector(pipeline, "damaged", "confluent", tmp_path)
        wait_until_reading(run, stages=3)  # the payments flow once the three stages read: their start-up is not the race
        sender.start()
        deadline = time.monotonic() + 120
        while routed_so_far(cluster, outputs) < 3000:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr_so_far()[-3000:]
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        _, stopped = run.communicate(timeout=60)
        assert run.returncode == 0, stopped[-3000:]
        stopped_at = sender.sent()
        assert stopped_at < count, f"the stop came after the last payment was sent: {stopped_at}"
        garbled = 0
        for path in (tmp_path / "damaged").rglob("*"):
            if path.is_file() and path.name != "LOCK":
                path.write_bytes(b"\x00garbled" * max(path.stat().st_size // 8, 1))
                garbled += 1
        assert garbled, "no store files to damage"
        run = detector(pipeline, "damaged", "confluent", tmp_path, "--idle-timeout", "8")
        sender.join(120)
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        rebuilt = [line for line in stderr.splitlines() if "is damaged" in line and "rebuilding it from its changelog" in line]
        assert rebuilt, stderr[-3000:]
        none_late(stopped, stderr)
        decided_as_the_backtest(cluster, pipeline, outputs, count)
        figures.append(dict(test="damaged state stores rebuilt from their changelogs", payments=count,
                            sent_at_stop=stopped_at, files_garbled=garbled, stores_rebuilt=len(rebuilt), differing=0))



def test_a_second_detector_of_the_group_on_the_same_state_folder_is_refused(cluster: str, tmp_path: Path) -> None:
    """Two detectors of one group with rules over other keys need a state folder each (docs/state.md): the second
    started on the first's folder stops at once, exit 1, saying so; the first goes on."""
    with fresh_pipeline(cluster, "kafka-python") as pipeline:
        first = detector(pipeline, "folder", "confluent", tmp_path)
        wait_until_reading(first)  # its stages are up, the folder is its
        second = detector(pipeline, "folder", "kafka-python", tmp_path)
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 1, stderr[-3000:]
        assert f"the state folder {tmp_path / 'folder'} is in use by another detector of group" in stderr, stderr[-3000:]
        assert "give each detector of a group its own --state-dir" in stderr
        assert first.poll() is None, first.stderr_so_far()[-3000:]
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 0, stderr[-3000:]


FILE_SIZE_LIMIT = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (262144, 262144)); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
"""Run a script with no file past 256 KiB: to RocksDB as a full disk ("File too large" for "No space left on device")."""


def test_a_store_that_cannot_write_stops_the_detector_and_the_restart_loses_nothing(cluster: str, tmp_path: Path,
                                                                                    figures: list[dict[str, Any]]) -> None:
    """A detector whose disk takes no more (its files limited to 256 KiB) stops with a clear error and a non-zero exit
    once a store cannot write; started again with room, it decides every payment once, as the backtest does: what the
    stores could not hold was committed in their changelogs."""
    count = 20_000
    with fresh_pipeline(cluster, "kafka-python") as pipeline:
        outputs = [f"{pipeline.topics.fraud}-full", f"{pipeline.topics.legit}-full"]
        sender = PacedSender(pipeline, count)
        command = pipeline.command("fraud_detector", *detector_args(pipeline, "full", tmp_path), group="full", client="confluent")
        full = Script([command[0], "-c", FILE_SIZE_LIMIT, *command[1:]])
        pipeline.started.append(full)
        wait_until_reading(full, stages=3)
        sender.start()
        try:
            _, stderr = full.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the detector did not stop: {full.stderr_so_far()[-4000:]}") from None
        assert full.returncode != 0, stderr[-3000:]
        assert "cannot write the state store" in stderr and "free the disk, then start the detector again" in stderr, \
            stderr[-3000:]
        failed_at = sender.sent()
        assert failed_at < count, f"the store failed only after the last payment was sent: {failed_at}"
        routed_before = routed_so_far(cluster, outputs)
        assert routed_before > 0, "the store failed before a commit: the test shows nothing"
        failed = stderr
        run = detector(pipeline, "full", "confluent", tmp_path, "--idle-timeout", "8")
        sender.join(120)
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        none_late(failed, stderr)
        decided_as_the_backtest(cluster, pipeline, outputs, count)
        figures.append(dict(test="a state store that cannot write (full disk)", payments=count, sent_at_failure=failed_at,
                            routed_records_before=routed_before, differing=0))
