"""Fixtures for tests against the real Kafka cluster (``make cluster-up``).

Each test gets its own topics and consumer groups (uuid suffix), and runs the
real scripts as subprocesses, once with each client library (``--client``):
every test that takes ``pipeline`` runs for kafka-python and for confluent.
Without a reachable 3-broker cluster the tests fail: they are never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from fraud_pipeline.clients import CLIENTS, confluent, kafka_python
from fraud_pipeline.config import DEFAULT_BOOTSTRAP_SERVERS, ConnectionSettings, Settings, TopicSettings
from fraud_pipeline.security import Security
from fraud_pipeline.topics import ensure_topics, pipeline_topics

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP_SERVERS
TEST_CLIENT_SECURITY: dict[str, Security] = {}
"""How the tests' own clients (readers, admins) reach a cluster, by its bootstrap servers; PLAINTEXT unless listed.

The secured cluster's fixture (tests/security) lists its ``admin`` here.
"""


def kafka_python_connection(bootstrap: str) -> dict[str, Any]:
    """kafka-python keyword arguments of the tests' own clients for a cluster."""
    return {"bootstrap_servers": bootstrap.split(","),
            **kafka_python.security_config(TEST_CLIENT_SECURITY.get(bootstrap, Security()))}


def confluent_connection(bootstrap: str) -> dict[str, Any]:
    """librdkafka settings of the tests' own clients for a cluster."""
    return {"bootstrap.servers": bootstrap, **confluent.security_config(TEST_CLIENT_SECURITY.get(bootstrap, Security()))}


@pytest.fixture(scope="session")
def cluster() -> str:
    """The bootstrap servers of a running cluster of 3 brokers."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP.split(","), request_timeout_ms=10000)
    except Exception as exc:
        pytest.fail(f"no Kafka cluster at {BOOTSTRAP} ({exc}): run `make cluster-up` or `make test`")
    try:
        brokers = admin.describe_cluster()["brokers"]
    finally:
        admin.close()
    assert len(brokers) == 3, f"expected 3 brokers, found {brokers}"
    return BOOTSTRAP


class Script(subprocess.Popen[str]):
    """A script started in the background, its output read as it comes.

    Left in a pipe until the test asks, a chatty log (kafka-python logs every failed connection while a broker
    is down) fills the pipe, and the script blocks in a write holding its log handler's lock: seen as a detector
    that stopped making progress after two broker kills. ``communicate`` returns all it wrote, as Popen's does.
    """

    def __init__(self, command: list[str]) -> None:
        super().__init__(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self._read: tuple[list[str], list[str]] = ([], [])
        self._readers = [threading.Thread(target=self._drain, args=(stream, into), daemon=True)
                         for stream, into in zip((self.stdout, self.stderr), self._read, strict=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in iter(stream.readline, ""):  # line by line: what a running script wrote is there to show
            into.append(line)

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)  # TimeoutExpired, as Popen.communicate
        for reader in self._readers:
            reader.join()
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return "".join(self._read[0]), "".join(self._read[1])

    @property
    def name(self) -> str:
        """The script's file name, for messages."""
        return Path(self.args[1]).name

    def stderr_lines(self) -> list[str]:
        """The lines the script has written to stderr until now (it may still be running)."""
        return list(self._read[1])

    def stderr_so_far(self) -> str:
        """What the script has written to stderr until now (it may still be running)."""
        return "".join(self.stderr_lines())


@dataclass(frozen=True)
class Pipeline:
    """Unique topic and group names of one test, and how to run the scripts on them."""

    topics: TopicSettings
    suffix: str
    bootstrap: str
    client: str
    """The client library the scripts run on, unless a call names another."""
    started: list[subprocess.Popen[str]] = field(default_factory=list)
    """Scripts started in the background; those still running when the test ends are killed."""
    client_configs: Mapping[str, str] = field(default_factory=dict)
    """Secured cluster: each script's client config file (``--client-config``), by script name."""

    def group(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def args(self, group: str | None = None) -> list[str]:
        args = [
            "--bootstrap-servers", self.bootstrap,
            "--payments-topic", self.topics.payments, "--fraud-topic", self.topics.fraud,
            "--legit-topic", self.topics.legit, "--dead-letter-topic", self.topics.dead_letter,
            "--rules-topic", self.topics.rules, "--rules-rejected-topic", self.topics.rules_rejected,
            "--lists-topic", self.topics.lists, "--labels-topic", self.topics.labels, "--audit-topic", self.topics.audit,
            "--claims-topic", self.topics.claims, "--list-definitions-topic", self.topics.list_definitions,
            "--proposals-topic", self.topics.proposals,
        ]
        return args + (["--group-id", self.group(group)] if group else [])

    def command(self, script: str, *extra: str, group: str | None = None, client: str | None = None) -> list[str]:
        config = ["--client-config", self.client_configs[script]] if script in self.client_configs else []
        return [sys.executable, str(ROOT / f"{script}.py"), "--client", client or self.client, *config, *self.args(group), *extra]

    def run(
        self, script: str, *extra: str, group: str | None = None, timeout: float = 180, client: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a script to completion; fail the test on a non-zero exit."""
        done = subprocess.run(self.command(script, *extra, group=group, client=client), capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    def start(self, script: str, *extra: str, group: str | None = None, client: str | None = None) -> subprocess.Popen[str]:
        proc = Script(self.command(script, *extra, group=group, client=client))
        self.started.append(proc)
        return proc

    def kill_scripts(self) -> None:
        """Kill the scripts still running (from any thread): whatever waits for them then sees them gone."""
        for proc in list(self.started):
            if proc.poll() is None:
                proc.kill()

    def kill_leftovers(self) -> None:
        """Kill what a failed test left running, so it does not load the machine for the tests after it."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """Each client library in turn: the tests that use it run once per library."""
    return str(request.param)


def fresh_topics() -> tuple[str, TopicSettings]:
    """A new suffix and the pipeline's topic names ending with it."""
    suffix = uuid.uuid4().hex[:10]
    return suffix, TopicSettings(
        payments=f"payments-{suffix}", fraud=f"fraud-{suffix}", legit=f"legit-{suffix}", dead_letter=f"dlq-{suffix}",
        rules=f"rules-{suffix}", rules_rejected=f"rules-rejected-{suffix}", lists=f"lists-{suffix}",
        labels=f"labels-{suffix}", audit=f"audit-{suffix}", claims=f"claims-{suffix}",
        list_definitions=f"list-definitions-{suffix}", proposals=f"proposals-{suffix}",
    )


@pytest.fixture
def pipeline(cluster: str, client: str) -> Iterator[Pipeline]:
    """Fresh topics for one test (deleted afterwards), the scripts on ``client``."""
    with fresh_pipeline(cluster, client) as made:
        yield made


@pytest.fixture
def pipelines(cluster: str) -> Iterator[dict[str, Pipeline]]:
    """One fresh pipeline per client library, for tests that hurt both at once (see ``for_each_client``)."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(fresh_pipeline(cluster, name)) for name in CLIENTS}


def for_each_client(pipelines: Mapping[str, Pipeline], run: Callable[[Pipeline], T]) -> dict[str, T]:
    """``run`` on every client's pipeline at the same time, each in a thread; what each returned, by client.

    The failure tests run both clients at once: the same faults, half the wall-clock time. The first
    run to fail stops the others (their scripts are killed, so their waits end) and is raised, each
    failure naming its client; the others' failures, most likely only the kill's, are named in its
    notes. Runs that failed at the same time are raised together, their first lines in the message.
    """

    def on(client: str, pipeline: Pipeline) -> T:
        try:
            return run(pipeline)
        except BaseException as exc:
            exc.add_note(f"(on {client})")
            raise

    with ThreadPoolExecutor(len(pipelines)) as pool:
        futures = {pool.submit(on, client, pipeline): client for client, pipeline in pipelines.items()}
        _, running = wait(futures, return_when=FIRST_EXCEPTION)
        if running:  # one failed: the others would only wait out their timeouts
            for future in running:
                pipelines[futures[future]].kill_scripts()
            wait(running)
    first = [exc for future in futures if future not in running and (exc := future.exception()) is not None]
    after = [(futures[future], exc) for future in running if (exc := future.exception()) is not None]
    for exc in first:
        for client, later in after:  # most likely only the kill: named, not raised
            exc.add_note(f"({client} failed too, once its scripts were killed: {one_line(later)})")
    if len(first) == 1:
        raise first[0]
    if first:
        raise BaseExceptionGroup("the failure test failed on more than one client: "
                                 + "; ".join(one_line(exc) for exc in first), first)
    return {client: future.result() for future, client in futures.items()}


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's type, the first line of its message and its notes, cut at ``limit`` characters: what a run's
    summary line can carry."""
    lines = str(exc).splitlines()
    text = " ".join([f"{type(exc).__name__}: {lines[0] if lines else ''}", *getattr(exc, "__notes__", ())])
    return text if len(text) <= limit else text[:limit - 1] + "…"


@contextlib.contextmanager
def fresh_pipeline(cluster: str, client: str) -> Iterator[Pipeline]:
    """Fresh topics on ``cluster`` (deleted afterwards), the scripts on ``client``; what a test left running is killed."""
    suffix, topics = fresh_topics()
    settings = Settings(ConnectionSettings(tuple(cluster.split(","))), topics)
    created = ensure_topics(settings, pipeline_topics(topics))
    assert set(created.values()) == {"created"}
    pipeline = Pipeline(topics, suffix, cluster, client)
    try:
        yield pipeline
    finally:
        pipeline.kill_leftovers()
    admin = KafkaAdminClient(**kafka_python_connection(cluster))
    try:
        # with the detectors' changelogs (<group>-<payments topic>-changelog), named after the suffix too
        admin.delete_topics([name for name in admin.list_topics() if suffix in name])
    finally:
        admin.close()


@pytest.fixture
def raw_producer(cluster: str) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(bootstrap_servers=cluster.split(","), acks="all")
    try:
        yield producer
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30, committed_only: bool = True) -> list[ConsumerRecord]:
    """Every record of a topic, from the beginning to its current end.

    ``committed_only`` reads as the processors do (``read_committed``): records
    of aborted transactions are left out.
    """
    consumer = KafkaConsumer(
        **kafka_python_connection(bootstrap), enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout_s}s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def wait_for_group(bootstrap: str, group: str, members: int, *scripts: Script, timeout_s: float = 60) -> None:
    """Wait until a consumer group is Stable with ``members`` members.

    ``scripts``: the processes that should be its members; one that exits fails the wait at once with what it
    printed, and a wait that times out shows what they printed so far. A coordinator that is not ready yet (a
    fresh cluster's offsets topic) is waited for.
    """
    admin = KafkaAdminClient(**kafka_python_connection(bootstrap))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            for script in scripts:
                assert script.poll() is None, f"{script.name} exited ({script.returncode}):\n{script.stderr_so_far()[-3000:]}"
            try:
                described = admin.describe_groups([group])[group]
            except kerr.KafkaError as exc:
                if not exc.retriable:
                    raise
                state = f"{type(exc).__name__} from the coordinator"
            else:
                state = described["group_state"]
                if state == "Stable" and len(described["members"]) == members:
                    return
            if time.monotonic() > deadline:
                printed = "".join(f"\n{script.name} so far:\n{script.stderr_so_far()[-3000:]}" for script in scripts)
                raise AssertionError(f"group {group} not stable with {members} members in {timeout_s:g}s: {state}{printed}")
            time.sleep(0.2)
    finally:
        admin.close()


def wait_for_committed(bootstrap: str, group: str, topic: str, total: int, timeout_s: float = 120) -> None:
    """Wait until a group's committed offsets on ``topic`` add up to ``total`` (every record read and committed)."""
    admin = kafka_python.Backend(tuple(bootstrap.split(",")), TEST_CLIENT_SECURITY.get(bootstrap, Security())).admin("tests")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            committed = sum(offset for tp, offset in admin.group_offsets(group).items() if tp.topic == topic and offset > 0)
            if committed >= total:
                return
            assert time.monotonic() < deadline, f"group {group} committed {committed} of {total} on {topic}"
            time.sleep(0.2)
    finally:
        admin.close()


def start_console(pipeline: Pipeline, port: int, *extra: str, https: ssl.SSLContext | None = None) -> subprocess.Popen[str]:
    """fraud_console.py on the pipeline's topics, once it answers on ``port`` (over https, trusting ``https``'s CA, when
    given); without accounts unless ``--users`` is given."""
    users = () if "--users" in extra else ("--users", str(ROOT / "results" / "no-such-users-file.json"))
    console = pipeline.start("fraud_console", "--port", str(port), *users, *extra)
    deadline = time.monotonic() + 60
    while True:
        assert console.poll() is None, f"the console exited:\n{console.communicate()[1][-3000:]}"
        try:
            with urllib.request.urlopen(f"{'https' if https else 'http'}://127.0.0.1:{port}/", timeout=2, context=https):
                return console
        except OSError:
            assert time.monotonic() < deadline, "the console did not answer within 60 s"
            time.sleep(0.3)


def console_json(port: int, path: str) -> tuple[int, Any]:
    """GET one of the console's JSON endpoints: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def console_state(port: int) -> dict[str, Any]:
    """The first state event of the console's stream."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=30) as response:
        for line in response:
            if line.startswith(b"data: "):
                return dict(json.loads(line[6:]))
    raise AssertionError("the event stream ended without a state")


def summary_count(stderr: str, name: str) -> int:
    """The total from a script's closing summary line, e.g. 'fraud_detector: 2000 payments in ...'."""
    match = re.search(rf"^{name}: (\d+) payments", stderr, re.M)
    assert match, f"no summary line from {name} in:\n{stderr[-2000:]}"
    return int(match.group(1))
