"""Nothing lost, nothing twice: the detector under kill -9, broker loss and SIGTERM.

Each test streams seeded payments (so every PAYMENT_ID is known in advance),
hurts the pipeline while they flow, then reads fraud + legit + dead letters as
the processors do (read_committed) and counts each id. Each test runs both
clients at once, each on its own pipeline (``for_each_client``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ElectionType, IsolationLevel, KafkaException
from confluent_kafka import TopicPartition as ConfluentTP
from confluent_kafka.admin import AdminClient, OffsetSpec

from fraud_pipeline.clients import KAFKA_PYTHON, Admin, backend
from fraud_pipeline.rules import load_ruleset
from fraud_pipeline.state import changelog_topic
from tests.chaos.conftest import cluster_command
from tests.decisions import differences, expected, routed
from tests.integration.conftest import ROOT, Pipeline, Script, confluent_connection, for_each_client, read_topic, summary_count
from tests.integration.test_pipeline import expected_payments

pytestmark = [
    pytest.mark.chaos,
    # kafka-python leaves sockets unclosed when a broker dies under it; their ResourceWarnings surface in
    # whichever test runs next. Only here, where brokers are killed on purpose, are they let through.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

COUNT = 20_000
OPEN_ENDED = 1_000_000
"""A producer's count that the test stops before it is reached."""
RATE = "2500"
STOP_COUNT = 120_000
"""Payments of the stop-signal test: enough that both stops land mid-stream on the faster client too. The test
sends its signal once it sees a commit past the last run's (a new consumer asking, every 0.2 s: up to about a
second); with 40,000 the confluent exactly-once detector (40,000 to 54,000 payments/s in the bench) once handled
the second run's whole 26,000 before the signal came."""
KILL_COMMIT_INTERVAL_S = 3.0
"""The detector's commit interval in the kill -9 tests: transactions long enough for a kill to land inside.

A transaction begins when the commit before it is through, and its commit is due an interval after its first
record was read (read while that commit ran): a commit that takes longer than the interval leaves the next one
due at once. CI, with three clusters and both clients' detectors on two cores, once saw commits of 2.2 s, and
later of 2.5 to 4.5 s with first records acknowledged 1 to 2.7 s after they were sent: the kill's moment then
lies inside the commit, between the acknowledgement its flush waits for and the end it asks for (see
wait_for_open_transaction)."""


def expected_ids(seed: int, count: int) -> set[str]:
    """The PAYMENT_IDs of the first ``count`` payments of the seeded stream."""
    return {p.payment_id for p in expected_payments(seed, count, 1000)}


def verdict(pipeline: Pipeline, seed: int, count: int = COUNT) -> tuple[int, int, int, Counter[str]]:
    """(lost, duplicated, dead-lettered, per-id counts) over fraud + legit, read_committed."""
    expected = expected_ids(seed, count)
    routed = read_topic(pipeline.bootstrap, pipeline.topics.fraud) + read_topic(pipeline.bootstrap, pipeline.topics.legit)
    seen = Counter(json.loads(r.value)["PAYMENT_ID"] for r in routed)
    dead = len(read_topic(pipeline.bootstrap, pipeline.topics.dead_letter))
    lost = len(expected - set(seen))
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    assert set(seen) <= expected, "ids that were never sent"
    return lost, duplicated, dead, seen


Offsets = dict[tuple[str, int], int]


def routed_ends(admin: AdminClient, pipeline: Pipeline) -> tuple[Offsets, Offsets]:
    """Every fraud and legit partition's stable offset and high watermark, both asked at once."""
    partitions = [ConfluentTP(topic, p) for topic in (pipeline.topics.fraud, pipeline.topics.legit)
                  for p in range(pipeline.topics.routed_partitions)]
    asked = [admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, isolation_level=isolation, request_timeout=10)
             for isolation in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)]
    stable, high = ({(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()} for futures in asked)
    return stable, high


def where_lost(pipeline: Pipeline, missing: set[str]) -> str:
    """Where the ``missing`` payments were read from, and each routed partition's stable and high offsets."""
    spans: dict[int, list[int]] = {}
    for record in read_topic(pipeline.bootstrap, pipeline.topics.payments):
        if json.loads(record.value)["PAYMENT_ID"] in missing:
            spans.setdefault(record.partition, []).append(record.offset)
    lines = [f"payments[{p}]: {len(offsets)} missing, offsets {min(offsets)}..{max(offsets)}" for p, offsets in sorted(spans.items())]
    stable, high = routed_ends(AdminClient(confluent_connection(pipeline.bootstrap)), pipeline)
    lines += [f"{topic}[{p}]: stable offset {stable[(topic, p)]}, high watermark {high[(topic, p)]}" for topic, p in sorted(stable)]
    return "\n".join(lines)


def start_producer(pipeline: Pipeline, seed: int, rate: str = RATE, count: int = COUNT) -> subprocess.Popen[str]:
    return pipeline.start("payment_producer", "--count", str(count), "--rate", rate, "--seed", str(seed), "--quiet")


def stop_producer(producer: subprocess.Popen[str]) -> int:
    """SIGTERM a producer; the payments it sent (a prefix of its seeded stream, flushed before it exits)."""
    producer.send_signal(signal.SIGTERM)
    return summary_count(finish(producer, "payment_producer"), "payment_producer")


def stacks(pid: int) -> str:
    """Every thread's stack of a live process, Python and native frames (py-spy), to show where it hangs."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        done = subprocess.run([str(spy), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no stacks: {exc})"
    return done.stdout + done.stderr


def save_log(name: str, text: str) -> Path:
    """Keep a failed run's whole log as a test artifact (results/chaos/)."""
    folder = ROOT / "results" / "chaos"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.log"
    path.write_text(text)
    return path


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 240) -> str:
    """Wait for a script to exit 0; on a timeout show where it hangs, kill it and show what it logged."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        where = stacks(proc.pid)
        proc.kill()
        _, stderr = proc.communicate()
        saved = save_log(f"hang-{what}-{proc.pid}", f"{where}\n{stderr}")
        pytest.fail(f"{what} still running after {timeout:.0f}s (stacks and whole log in {saved}); its stacks:\n{where}\n"
                    f"its log ends:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{stderr[-3000:]}"
    return stderr


KILLS = 3
"""Kills that must each hurt, per kill test and client."""
MAX_KILLS = 6
"""Exactly-once: kills tried at most; one that the trace shows outside an open transaction does not count."""


def kill_detector_repeatedly(
    pipeline: Pipeline, guarantee: str, seed: int, figures: list[dict[str, Any]], rate: str = "450", over: str = "",
) -> None:
    """Kill -9 the detector while ``rate`` payments/s flow until three kills hurt; the run's figures go to ``figures``
    before its checks.

    Exactly-once: the detector traces its transactions (``--trace-transactions``); the kill comes once the trace says
    the brokers acknowledged a record of a transaction whose commit has not begun, and the killed run's whole trace
    must end so (a kill that landed elsewhere, possible on a loaded machine, is not counted: another is tried, up to
    MAX_KILLS); each counted kill then leaves at least one record for the restart to abort.
    At-least-once: each kill must be followed by payments routed twice from around where it fell (sent, offsets not
    yet committed). The payments flow until the detector started after the last kill has committed: each restart
    waits up to the session timeout (10 s) for the killed member to leave the group, then restores its state, so how
    long the kills take depends on the machine. Then the producer is stopped and what it sent is what must arrive.
    """
    rng = random.Random(seed)
    exactly_once = guarantee == "exactly-once"
    producer = start_producer(pipeline, seed, rate=rate, count=OPEN_ENDED)
    # Transactions of seconds: each kill lands inside an open one, whose records must then be aborted.
    interval_ms = str(int(KILL_COMMIT_INTERVAL_S * 1000))
    args = ("--quiet", "--idle-timeout", "10", "--guarantee", guarantee, "--commit-interval-ms", interval_ms,
            *(("--trace-transactions",) if exactly_once else ()))
    detector = pipeline.start("fraud_detector", *args, group="detector")
    admin = AdminClient(confluent_connection(pipeline.bootstrap))
    kills, committed, killed_at, open_at_kill = 0, 0, [], []
    waits: list[float] = []
    written: list[Offsets] = []
    while len(killed_at) < KILLS:
        assert kills < MAX_KILLS, f"{kills} kills, only {len(killed_at)} inside an open transaction: {open_at_kill}"
        # kill only once this detector is committing, at a random moment after that,
        # and (exactly-once) while a transaction of it has records on the brokers
        committed = wait_for_progress(pipeline, "detector", committed, detector)
        time.sleep(rng.uniform(0.05, 1.5))
        if exactly_once:
            wait_for_open_transaction(detector)
        else:
            committed = committed_total(pipeline, "detector")
        assert detector.poll() is None, f"detector died on its own:\n{detector.communicate()[1][-3000:]}"
        detector.send_signal(signal.SIGKILL)
        log = detector.communicate(timeout=10)[1]
        kills += 1
        if exactly_once:
            # The killed run's own trace: which transaction was open, and whether the brokers had its records.
            where = transaction_at_end(log)
            open_at_kill.append(where)
            waits += acknowledgement_waits(log)
            if where.startswith(ON_THE_BROKERS):
                killed_at.append(committed)
        else:
            killed_at.append(committed)
            # what the killed run wrote ends here (its copies of the payments the restart routes again)
            written.append(routed_ends(admin, pipeline)[1])
        detector = pipeline.start("fraud_detector", *args, group="detector")
    committed = wait_for_progress(pipeline, "detector", committed, detector)
    assert producer.poll() is None, "the payments stopped flowing before the last restart committed"
    sent = stop_producer(producer)
    finish(detector, "fraud_detector")
    lost, duplicated, dead, _ = verdict(pipeline, seed, sent)
    aborted = (
        len(read_topic(pipeline.bootstrap, pipeline.topics.fraud, committed_only=False))
        + len(read_topic(pipeline.bootstrap, pipeline.topics.legit, committed_only=False))
        - sent - duplicated
    )
    run: dict[str, Any] = dict(
        test=f"detector kill -9{over} ({guarantee}, {pipeline.client})", sent=sent, kills=kills, killed_after_committed=killed_at,
        lost=lost, duplicated=duplicated, dead_lettered=dead, aborted_records=aborted,
    )
    if exactly_once:
        waits.sort()
        run.update(transaction_at_kill=open_at_kill, first_record_acknowledged_after_s=dict(
            transactions=len(waits), median=waits[len(waits) // 2] if waits else None, max=max(waits, default=None),
            over_0_1=sum(wait > 0.1 for wait in waits)))
    else:
        run.update(duplicated_per_kill=duplicates_per_kill(pipeline, written))
    figures.append(run)
    assert lost == 0, run
    assert dead == 0, run
    if exactly_once:
        assert duplicated == 0, run
        # It hurt: each kill fell inside an open transaction with records on the brokers, aborted by the restart,
        # which a read_uncommitted reader still sees.
        assert aborted >= len(killed_at), f"fewer aborted records than kills inside open transactions: {run}"
    else:
        # It hurt: each kill landed while routed payments waited for their offsets' commit, routed again after the restart.
        assert all(run["duplicated_per_kill"]), f"a kill that routed nothing twice: {run}"


TRACE = re.compile(r"fraud_pipeline\.transactions: transaction (\d+):? "
                   r"(begun|first record sent|first record acknowledged|committing|ending|committed|aborted)")
ON_THE_BROKERS = "open, records on the brokers"
"""A transaction whose first record the brokers acknowledged and whose end was not asked for yet (its commit may
have begun: records flushed, offsets added): a kill now leaves records for the next producer of its transactional
id to abort."""


def transaction_at_end(log: str) -> str:
    """Where the last transaction of a detector's ``--trace-transactions`` log stands: "open, records on the brokers
    (n)" (", committing" added once its commit began), "open, records queued (n)" (not acknowledged yet), "open,
    empty (n)", "committing (n)" (its records not acknowledged yet), "ending (n)" (its end asked for or about to
    be: its outcome unknown), "ended (n)", or "no transaction". Its acknowledgement can be logged after its commit
    began (the commit's flush hears of it): each step is read by its transaction's number."""
    return _where(TRACE.findall(log))


def _where(steps: list[tuple[str, str]]) -> str:
    """``transaction_at_end`` of the trace's steps, each (transaction number, step)."""
    if not steps:
        return "no transaction"
    number = steps[-1][0]
    seen = {step for n, step in steps if n == number}
    if seen & {"committed", "aborted"}:
        return f"ended ({number})"
    if "ending" in seen:
        return f"ending ({number})"
    if "first record acknowledged" in seen:
        return f"{ON_THE_BROKERS}{', committing' if 'committing' in seen else ''} ({number})"
    if "committing" in seen:
        return f"committing ({number})"
    return f"open, records queued ({number})" if "first record sent" in seen else f"open, empty ({number})"


STAMPED = re.compile(r"^(\S+ \S+) INFO fraud_pipeline\.transactions: transaction (\d+): first record (sent|acknowledged)", re.M)


def acknowledgement_waits(log: str) -> list[float]:
    """Seconds from each transaction's first record queued to its acknowledgement, from a ``--trace-transactions``
    log's time stamps (to the millisecond): how long the records of an open transaction stay in the client."""
    at: dict[tuple[str, str], datetime.datetime] = {}
    for stamp, number, step in STAMPED.findall(log):
        at[number, step] = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
    return [(at[n, "acknowledged"] - sent).total_seconds() for (n, step), sent in at.items()
            if step == "sent" and (n, "acknowledged") in at]


def wait_for_open_transaction(proc: Script, timeout_s: float = 60) -> None:
    """Wait until the detector's trace says a transaction has records on the brokers and its end is not asked for.

    Queued is not enough: a record waits in the client until its partition joins the transaction, which the
    coordinator refuses while the transaction before is still being completed (CONCURRENT_TRANSACTIONS, retried
    with backoff). On a loaded machine that wait can outlast the commit interval, and a commit that takes longer
    than the interval leaves the next one due at once: the records are then acknowledged during the commit's
    flush, and the moment to kill runs until the commit asks for its end (records flushed, offsets added). On a
    timeout the trace's last steps, with their times, show why."""
    deadline = time.monotonic() + timeout_s
    steps: list[tuple[str, str]] = []
    seen, read = "", 0
    while True:
        assert proc.poll() is None, f"detector exited:\n{proc.communicate()[1][-3000:]}"
        lines = proc.stderr_lines()
        if len(lines) > read:
            new = TRACE.findall("".join(lines[read:]))  # only the new lines: a long log is slow to scan
            read = len(lines)
            steps = (steps + new)[-16:]
            seen = _where(steps)
        if seen.startswith(ON_THE_BROKERS):
            return
        if time.monotonic() >= deadline:
            log = proc.stderr_so_far()
            saved = save_log(f"no-open-transaction-{proc.pid}", log)
            steps = [line for line in log.splitlines() if "fraud_pipeline.transactions" in line][-24:]
            pytest.fail(f"no transaction with records on the brokers in {timeout_s:.0f}s (the trace now: {seen}; the "
                        f"whole log in {saved}); the trace's last steps:\n" + "\n".join(steps))
        time.sleep(0.005)


def duplicates_per_kill(pipeline: Pipeline, written: list[Offsets]) -> list[int]:
    """Payments routed twice, each counted for the kill that stopped the run which routed it first. ``written``: the
    routed partitions' ends taken just after each kill; a copy below them, and not below those of the kill before,
    was written by the run that kill stopped. (Not by the input's committed offsets at the kill: a restart on a
    loaded machine can commit a first transaction shorter than what the killed run had routed, and the copies
    past it would be counted for the next kill.)"""
    runs: dict[str, list[int]] = {}
    for topic in (pipeline.topics.fraud, pipeline.topics.legit):
        for r in read_topic(pipeline.bootstrap, topic):
            run = sum(1 for ends in written if ends[topic, r.partition] <= r.offset)
            runs.setdefault(json.loads(r.value)["PAYMENT_ID"], []).append(run)
    per_kill = [0] * len(written)
    for copies in runs.values():
        if len(copies) > 1 and (first := min(copies)) < len(written):
            per_kill[first] += len(copies) - 1
    return per_kill


def test_detector_kill9_exactly_once(pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    """Both clients at once, each its own pipeline: three kills each, every kill inside an open transaction."""
    for_each_client(pipelines, lambda pipeline: kill_detector_repeatedly(pipeline, "exactly-once", 101, figures))


def test_detector_kill9_at_least_once(pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    for_each_client(pipelines, lambda pipeline: kill_detector_repeatedly(pipeline, "at-least-once", 202, figures))


def java_hash(text: str) -> int:
    """Java's ``String.hashCode`` (ASCII text), which Kafka uses to place a group or a transactional id."""
    h = 0
    for ch in text:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator(admin: Admin, internal_topic: str, key: str) -> int:
    """The broker coordinating ``key``: the leader of its partition of ``__consumer_offsets`` or ``__transaction_state``."""
    partitions = admin.describe_topics([internal_topic])[internal_topic]
    h = java_hash(key)
    return partitions[(0 if h == -(1 << 31) else abs(h)) % len(partitions)].leader


def key_coordinated_by(admin: Admin, internal_topic: str, node: int, name: Callable[[int], str]) -> str:
    """The first ``name(i)`` whose coordinator is ``node``."""
    for i in range(1000):
        if coordinator(admin, internal_topic, name(i)) == node:
            return name(i)
    raise AssertionError(f"no key of {internal_topic} lands on node {node}")


def payments_leaders(admin: Admin, pipeline: Pipeline) -> dict[int, int]:
    return {p.partition: p.leader for p in admin.describe_topics([pipeline.topics.payments])[pipeline.topics.payments]}


def wait_back_in_isr(admin: Admin, pipeline: Pipeline, node: int, timeout_s: float = 90) -> float:
    """Wait until ``node`` is in the ISR of every partition of the pipeline's topics; then make the preferred leaders lead again."""
    started = time.monotonic()
    names = [pipeline.topics.payments, pipeline.topics.fraud, pipeline.topics.legit]
    while True:
        described = admin.describe_topics(names)
        behind = [(name, p.partition) for name in names for p in described[name] if node not in p.isr]
        if not behind:
            break
        assert time.monotonic() - started < timeout_s, f"node {node} not back in the ISR of {behind} after {timeout_s:.0f}s"
        time.sleep(0.5)
    in_isr_s = time.monotonic() - started
    elect_preferred_leaders(admin, pipeline)  # leadership moved away while the node was down: the next kill hurts as much
    return round(in_isr_s, 1)


def elect_preferred_leaders(admin: Admin, pipeline: Pipeline, timeout_s: float = 120) -> None:
    """Make each partition's preferred replica its leader again (leaders spread over the brokers); wait until the metadata says so.

    Asked again every 5 s: a replica still catching up after an earlier test's broker kill cannot lead yet.
    """
    elector = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    names = ["__consumer_offsets", "__transaction_state", pipeline.topics.payments]
    deadline = time.monotonic() + timeout_s
    asked_at = 0.0
    while any(p.leader != p.replicas[0] for parts in admin.describe_topics(names).values() for p in parts):
        assert time.monotonic() < deadline, "the preferred leaders did not take over"
        if time.monotonic() - asked_at >= 5:
            asked_at = time.monotonic()
            with contextlib.suppress(KafkaException):  # some partitions already led by their preferred replica
                elector.elect_leaders(ElectionType.PREFERRED, None).result(timeout=30)
        time.sleep(0.5)


@dataclass
class Lane:
    """One client's pipeline through the broker kills: its group, transactional id, scripts and what they logged."""

    pipeline: Pipeline
    group_name: str
    """The detector's group, as ``Pipeline.group`` takes it (the test's suffix is added)."""
    txn: str
    producer: subprocess.Popen[str]
    detector: subprocess.Popen[str]
    committed: int = 0
    logs: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        return self.pipeline.group(self.group_name)

    def restart_detector(self, txn: str | None = None, *, stop: bool = True) -> None:
        """SIGTERM the detector (unless ``stop`` is False: it was stopped already) and start it again, on ``txn`` if given."""
        if stop:
            self.stop_detector()
        self.txn = txn or self.txn
        self.detector = self.pipeline.start("fraud_detector", *BROKER_KILL_ARGS, "--transactional-id", self.txn, group=self.group_name)

    def stop_detector(self) -> None:
        self.detector.send_signal(signal.SIGTERM)
        self.logs.append(finish(self.detector, f"fraud_detector ({self.pipeline.client})"))

    def progress(self, timeout_s: float = 60) -> None:
        self.committed = wait_for_progress(self.pipeline, self.group_name, self.committed, self.detector, timeout_s=timeout_s)


def progress(lanes: list[Lane], timeout_s: float = 60, since: float | None = None) -> dict[str, float]:
    """Wait, for every lane at once, until its detector commits more; per client, the seconds since ``since`` it took."""
    began = time.monotonic() if since is None else since

    def one(lane: Lane) -> float:
        lane.progress(timeout_s)
        return round(time.monotonic() - began, 1)

    with ThreadPoolExecutor(len(lanes)) as pool:
        return dict(zip([lane.pipeline.client for lane in lanes], pool.map(one, lanes), strict=True))


DAY_RULES = Path(__file__).with_name("day_rules.yaml")
BROKER_KILL_ARGS = ("--quiet", "--idle-timeout", "60",  # a broker loss can hold the records for a while: not idleness
                    "--trace-transactions",  # a failure's log then says where each transaction stood
                    # rules over 24 h of each account: every commit also writes the state's changelog
                    "--rules", str(DAY_RULES))


def test_each_broker_killed_in_turn(pipeline: Pipeline, figures: list[dict[str, Any]]) -> None:
    """Kill -9 each broker in turn while payments flow: the broker coordinating the detector's transactions,
    then its group's, then a third one during the detector's start-up. No script exits; 0 lost, 0 duplicated,
    every decision the single engine's.

    One client at a time, unlike the other failure tests: with both clients' pipelines through the same kills,
    one run of the confluent lane routed one payment twice, not yet reproduced; ``make soak`` runs the test below,
    both clients at once, until it is.
    """
    brokers_killed_in_turn({pipeline.client: pipeline}, figures)


@pytest.mark.soak
def test_each_broker_killed_in_turn_both_clients_at_once(pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    """The conditions a duplicate was once seen under: both clients' pipelines through the same broker kills."""
    brokers_killed_in_turn(pipelines, figures)


def brokers_killed_in_turn(pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    status = cluster_command("status", check=False)
    assert status.returncode == 0, f"this test kills brokers of the failure tests' own cluster:\n{status.stdout}"
    # A failure leaves the detector's stacks and whole log in results/chaos/. Fixed here, each once seen:
    # a confluent detector hung on SIGTERM in librdkafka's send_offsets_to_transaction past its timeout
    # (librdkafka issue 5456; now set aside by the watchdog in clients/confluent.py), and a kafka-python
    # detector kept retrying "Unable to verify the partition has been added to the transaction" after the
    # transaction coordinator's loss (records now expire within the transaction timeout, then it aborts).
    seed = 303
    any_pipeline = next(iter(pipelines.values()))
    admin = backend(KAFKA_PYTHON, tuple(any_pipeline.bootstrap.split(","))).admin("chaos")
    lanes: list[Lane] = []
    rounds: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    """Where the test's time goes, phase by phase."""
    lap = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        seconds[name] = round(now - lap[0], 1)
        lap[0] = now

    try:
        # A fresh cluster creates its coordinators' topics on first use: a group's, a transactional id's.
        committed_total(any_pipeline, "warm-up")
        warm_up = backend(KAFKA_PYTHON, tuple(any_pipeline.bootstrap.split(","))).producer("chaos", f"chaos-{any_pipeline.suffix}")
        warm_up.init_transactions(60)
        warm_up.close()
        deadline = time.monotonic() + 60
        while not {"__consumer_offsets", "__transaction_state"} <= admin.list_topics():
            assert time.monotonic() < deadline, "the coordinators' topics were not created"
            time.sleep(0.5)
        elect_preferred_leaders(admin, any_pipeline)
        # The first round wants the transactions and the groups on two different brokers, among those leading now:
        # every lane's transactional id on one, every lane's group on the other.
        leaders = {name: sorted({p.leader for p in parts}) for name, parts in
                   admin.describe_topics(["__transaction_state", "__consumer_offsets"]).items()}
        txn_node = random.Random(seed).choice(leaders["__transaction_state"])
        group_node = next((n for n in leaders["__consumer_offsets"] if n != txn_node), txn_node)
        for pipeline in pipelines.values():
            group_name = key_coordinated_by(admin, "__consumer_offsets", group_node, f"detector{{}}-{pipeline.suffix}".format)
            group_name = group_name.removesuffix(f"-{pipeline.suffix}")
            txn = key_coordinated_by(admin, "__transaction_state", txn_node, f"{pipeline.group(group_name)}-a{{}}".format)
            producer = pipeline.start("payment_producer", "--rate", "400", "--seed", str(seed), "--quiet")
            detector = pipeline.start("fraud_detector", *BROKER_KILL_ARGS, "--transactional-id", txn, group=group_name)
            lanes.append(Lane(pipeline, group_name, txn, producer, detector))
        progress(lanes)
        phase("set-up")
        for role in ("transaction coordinator", "group coordinator", "detector start-up"):
            # Each round's broker is chosen now, from where leadership stands after the last round.
            killed = [r["node"] for r in rounds]
            restart = role == "detector start-up"
            if role == "transaction coordinator":
                node = coordinator(admin, "__transaction_state", lanes[0].txn)
            elif role == "group coordinator":
                node = coordinator(admin, "__consumer_offsets", lanes[0].group)
            if restart or node in killed:
                node = next(n for n in (1, 2, 3) if n not in killed)  # the third broker
            for lane in lanes:
                if restart or node not in (coordinator(admin, "__transaction_state", lane.txn),
                                           coordinator(admin, "__consumer_offsets", lane.group)):
                    # This broker coordinates nothing of the lane's detector (or it is the start-up round):
                    # the detector gets a transactional id this broker coordinates.
                    txn = key_coordinated_by(admin, "__transaction_state", node, f"{lane.group}-{len(rounds)}-{{}}".format)
                    if restart:
                        lane.txn = txn
                    else:
                        lane.restart_detector(txn)
                        lane.progress()
            led: dict[str, list[int]] = {}
            led_changelog: dict[str, list[int]] = {}
            coordinates: dict[str, list[str]] = {}
            for lane in lanes:
                client = lane.pipeline.client
                led[client] = sorted(p for p, leader in payments_leaders(admin, lane.pipeline).items() if leader == node)
                changelog = changelog_topic(lane.group, lane.pipeline.topics.payments)
                led_changelog[client] = sorted(p.partition for p in admin.describe_topics([changelog]).get(changelog, [])
                                               if p.leader == node)
                assert led[client], f"node {node} leads no payments partition of {client}'s pipeline: the kill would not hurt"
                coordinates[client] = [name for name, topic, key in (("transactions", "__transaction_state", lane.txn),
                                                                     ("group", "__consumer_offsets", lane.group))
                                       if coordinator(admin, topic, key) == node]
                assert coordinates[client], f"node {node} coordinates neither the transactions nor the group of {client}'s detector"
            if restart:
                for lane in lanes:
                    lane.stop_detector()
            cluster_command("kill", str(node))
            killed_at = time.monotonic()
            if restart:  # the whole start-up (topics, rules, init_transactions) with the broker down
                for lane in lanes:
                    lane.restart_detector(stop=False)
            # The pipelines go on with the node down: committed offsets keep growing.
            resumed_s = progress(lanes, timeout_s=90, since=killed_at)
            time.sleep(2)
            for lane in lanes:
                for name, proc in (("payment_producer", lane.producer), ("fraud_detector", lane.detector)):
                    assert proc.poll() is None, (f"{name} ({lane.pipeline.client}) exited while node {node} was down:\n"
                                                 f"{proc.communicate()[1][-3000:]}")
            cluster_command("up")
            back_in_isr_s = max(wait_back_in_isr(admin, lane.pipeline, node) for lane in lanes)
            rounds.append({"node": node, "role": role, "led_payments": led, "led_changelog": led_changelog, "coordinated": coordinates,
                           "committing_again_s": resumed_s, "back_in_isr_s": back_in_isr_s})
            phase(role)
        sent = {}
        for lane in lanes:
            sent[lane.pipeline.client] = stop_producer(lane.producer)
        for lane in lanes:
            # Stopped once it has committed every payment, rather than after a minute of idleness.
            wait_for_progress(lane.pipeline, lane.group_name, sent[lane.pipeline.client] - 1, lane.detector, timeout_s=120)
            phase(f"catch-up ({lane.pipeline.client})")
            lane.stop_detector()
            phase(f"stop ({lane.pipeline.client})")
    finally:
        admin.close()
        cluster_command("up", check=False)  # a failed round must not leave a broker down for the tests after it
    for lane in lanes:
        client = lane.pipeline.client
        lost, duplicated, dead, seen = verdict(lane.pipeline, seed, sent[client])
        handled = sum(summary_count(log, "fraud_detector") for log in lane.logs)
        # Every decision (outcome, score, rules fired) against the single engine's over the same records, in-process.
        wanted = expected(lane.pipeline.bootstrap, lane.pipeline.topics.payments, load_ruleset(DAY_RULES),
                          lane.pipeline.topics.payments_partitions)
        wrong = differences(routed(lane.pipeline.bootstrap, [lane.pipeline.topics.fraud, lane.pipeline.topics.legit]), wanted)
        phase(f"checks ({client})")
        figures.append(dict(test=f"brokers killed in turn ({client})", sent=sent[client], lost=lost, duplicated=duplicated,
                            dead_lettered=dead, differing=len(wrong), handled=handled, rounds=rounds, detector_runs=len(lane.logs),
                            detector_rollbacks=sum(log.count("rolling back") for log in lane.logs),
                            commits_through_after_failure=sum(log.count("went through at its coordinator") for log in lane.logs),
                            seconds=seconds))
        if (lost, duplicated, dead) != (0, 0, 0) or handled != sent[client]:
            saved = save_log(f"broker-kill-{lane.pipeline.suffix}", "\n\n".join(lane.logs))
            missing = expected_ids(seed, sent[client]) - set(seen)
            pytest.fail(f"{json.dumps(figures[-1])}\n{where_lost(lane.pipeline, missing)}\ndetector logs: {saved}")
        assert not wrong, f"{len(wrong)} payments decided otherwise than the single engine, e.g. {sorted(wrong.items())[:3]}"
        assert any(r["led_changelog"][client] for r in rounds), f"no kill took a leader of the state's changelog: {figures[-1]}"


def wait_for_progress(pipeline: Pipeline, group: str, above: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> int:
    """Wait until the group's committed offsets pass ``above``; return them."""
    deadline = time.monotonic() + timeout_s
    while (committed := committed_total(pipeline, group)) <= above:
        assert proc.poll() is None, f"detector exited:\n{proc.communicate()[1][-3000:]}"
        if time.monotonic() > deadline:
            where = stacks(proc.pid)
            proc.kill()
            log = proc.communicate()[1]
            saved = save_log(f"no-progress-{pipeline.suffix}", f"{where}\n{log}")
            pytest.fail(f"no progress past {above} committed payments in {timeout_s:.0f}s; stacks and whole log in {saved}; "
                        f"the log ends:\n{log[-4000:]}")
        time.sleep(0.2)
    return committed


def committed_total(pipeline: Pipeline, group: str) -> int:
    """The group's committed offsets on the payments topic, summed."""
    return sum(committed_offsets(pipeline, group).values())


def committed_offsets(pipeline: Pipeline, group: str) -> dict[int, int]:
    """The group's committed offset of each payments partition (0: none yet); asked again while the group's
    coordinator moves."""
    consumer = Consumer({**confluent_connection(pipeline.bootstrap), "group.id": pipeline.group(group), "enable.auto.commit": False,
                         "log_level": 0})
    partitions = [ConfluentTP(pipeline.topics.payments, p) for p in range(pipeline.topics.payments_partitions)]
    try:
        for _ in range(30):
            try:
                return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10)}
            except KafkaException:  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS while a broker is down
                time.sleep(1)
        raise AssertionError(f"could not read the committed offsets of {group} in 30 attempts")
    finally:
        consumer.close()


def test_stop_signals_drain_and_commit(pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    """SIGTERM, then SIGINT (the same handler), each mid-stream on a running detector; both clients at once."""
    for_each_client(pipelines, lambda pipeline: stop_twice_mid_stream(pipeline, figures))


def stop_twice_mid_stream(pipeline: Pipeline, figures: list[dict[str, Any]]) -> None:
    """Stop the detector with SIGTERM, start it again and stop it with SIGINT, then let a third run finish the stream.

    Each stop must end the process within 5 s with exactly what it handled committed; together the
    runs route each payment exactly once.
    """
    seed = 404
    pipeline.run("payment_producer", "--count", str(STOP_COUNT), "--rate", "0", "--seed", str(seed), "--quiet")
    run: dict[str, Any] = {"test": f"SIGTERM, then SIGINT mid-stream ({pipeline.client})", "sent": STOP_COUNT}
    figures.append(run)  # filled in as it goes: a failed run still reports what it saw
    handled_before = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        detector = pipeline.start("fraud_detector", "--quiet", group="detector")
        wait_for_progress(pipeline, "detector", handled_before, detector)  # stop it mid-stream, once it is committing
        sent_at = time.monotonic()
        detector.send_signal(sig)
        stderr = finish(detector, "fraud_detector", timeout=30)
        stop_s = time.monotonic() - sent_at
        handled = summary_count(stderr, "fraud_detector")
        committed = committed_total(pipeline, "detector")
        run[f"{sig.name}_stop_seconds"], run[f"{sig.name}_handled"] = round(stop_s, 2), handled
        assert handled > 0 and handled_before + handled < STOP_COUNT, f"stop the detector mid-stream: {run}"
        assert committed == handled_before + handled, "every payment handled before the stop is committed, no more"
        assert stop_s < 5, run
        handled_before = committed
    # a last run finishes the stream: together, each payment exactly once
    rest = pipeline.run("fraud_detector", "--quiet", "--idle-timeout", "5", group="detector")
    lost, duplicated, dead, _ = verdict(pipeline, seed, STOP_COUNT)
    run.update(after_restart=summary_count(rest.stderr, "fraud_detector"), lost=lost, duplicated=duplicated)
    assert (lost, duplicated, dead) == (0, 0, 0), run
