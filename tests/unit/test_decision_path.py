"""The decision path's three stages decide every payment as the single engine does, whatever befalls them.

A small Kafka in memory (topics of partitions, transactions that commit or
abort, committed offsets, compacted changelogs read by the real Restorer)
runs the real Anchor, KeyStage and Decider with their real PartitionStates
(RocksDB stores in a temporary folder) as two detectors sharing the
partitions. A seeded schedule interleaves their steps with aborted
transactions, kills (a stage's process gone, its store kept or lost) and
rebalances (partitions handed to the other detector). At the end, every
payment is routed exactly once, with the decision rules.order.reference
makes over the same records.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from fraud_pipeline.backtest import generated
from fraud_pipeline.clients import NotAuthorizedError, Record, TopicPartition
from fraud_pipeline.live_rules import LiveRules
from fraud_pipeline.payment import decode, encode
from fraud_pipeline.rules import Decision, RuleSet, load_ruleset
from fraud_pipeline.rules.order import partition_of, reference, rekeyed_groups
from fraud_pipeline.runtime import Summary
from fraud_pipeline.stage import DeadLetters, LineBuffer
from fraud_pipeline.state import PartitionStates
from fraud_pipeline.topology import Anchor, Decider, KeyStage, Plan, Purger, Router, StagePlan, decode_state, encode_state
from fraud_pipeline.topology import anchor as anchor_module

RECOMMENDED = load_ruleset(Path(__file__).resolve().parents[2] / "fraud_pipeline/rules/sets/recommended.yaml")
PARTITIONS = 4
MIX = ("burst=0.01,small-then-large=0.01,large-to-stranger=0.01,takeover=0.01,device-card-testing=0.02,mule-fan-in=0.02,"
       "new-payee-large=0.01,above-baseline=0.01,shop-terminal=0.01,family-payee=0.01")
"""Every pattern the recommended rules look for, often enough to be in a few hundred payments."""
FRAUD, LEGIT = "fraud_payments", "legit_payments"


class Topics:
    """Every topic's committed records, per partition; a changelog is read the same way by the Restorer."""

    def __init__(self) -> None:
        self.logs: dict[str, dict[int, list[Record]]] = defaultdict(lambda: defaultdict(list))
        self.committed: dict[tuple[str, str, int], int] = {}
        """(group, topic, partition) -> the next offset committed."""

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Any, timestamp: int = 0) -> None:
        log = self.logs[topic][partition]
        log.append(Record(topic, partition, len(log), key, value, tuple(headers or ()), timestamp))


class Transaction:
    """A stage's Output: its sends wait for the commit (read_committed readers see nothing of an aborted one)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.sends: list[tuple[str, bytes | None, bytes | None, Any, int]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None, partition: int | None = None) -> None:
        assert partition is not None or topic == "dlq"  # the stages choose every partition but the dead letters'
        self.sends.append((topic, key, value, headers, partition or 0))

    def partition_for(self, topic: str, source_partition: int) -> int:
        return source_partition % PARTITIONS

    def commit(self) -> None:
        for topic, key, value, headers, partition in self.sends:
            self.topics.append(topic, partition, key, value, headers)
        self.sends.clear()

    def abort(self) -> None:
        self.sends.clear()


class Direct(Transaction):
    """A producer outside transactions (the anchor's markers of quiet partitions): seen once flushed."""

    def flush(self, timeout_s: float | None = None) -> None:
        self.commit()


class Reader:
    """The groupless consumer a Restorer reads a changelog with."""

    def __init__(self, topics: Topics, topic: str) -> None:
        self._topics, self._topic = topics, topic
        self._positions: dict[TopicPartition, int] = {}

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._positions = dict(offsets)

    def poll(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch = {}
        for tp, position in self._positions.items():
            records = self._topics.logs[self._topic][tp.partition][position:position + 50]
            if records:
                batch[tp] = records
                self._positions[tp] = position + len(records)
        return batch

    def position(self, tp: TopicPartition) -> int:
        return self._positions.get(tp, 0)

    def watermarks(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (0, len(self._topics.logs[self._topic][tp.partition])) for tp in partitions}

    def close(self) -> None:
        pass


class Stage:
    """One stage of one detector: its handler over its partitions, reading from the group's committed offsets."""

    def __init__(self, kind: str, group: str, source: str, topics: Topics, folder: Path, rules: LiveRules, plan: Plan) -> None:
        self.kind, self.group, self.source, self.topics = kind, group, source, topics
        self.output = Transaction(topics)
        self.states = PartitionStates(folder, group, source, f"{group}-changelog", cast(Any, Reader(topics, f"{group}-changelog")),
                                      encode_state, decode_state)
        lines = LineBuffer(Summary(kind, "records"), quiet=True)
        output, dead = cast(Any, self.output), DeadLetters(cast(Any, self.output), "dlq", kind)
        self.handler: Any
        if kind == "anchor":
            self.handler = Anchor(plan, output, dead, lines, lambda: rules.current, self.states, PARTITIONS,
                                  cast(Any, Direct(topics)))
        elif kind == "keys":
            self.handler = KeyStage(plan, output, dead, lines, lambda: rules.current, self.states, PARTITIONS)
        else:
            self.handler = Decider(output, dead, lines, rules, None, self.states, Router(output, FRAUD, LEGIT, lines, None))
        self.owned: set[int] = set()
        self.positions: dict[int, int] = {}
        self.read: dict[int, int] = {}

    # the consumer calls a PartitionStates makes to position a restored partition
    def committed(self, partitions: Iterable[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        return {tp: self.topics.committed.get((self.group, self.source, tp.partition)) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]

    def lag(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.topics.logs[self.source][tp.partition]) - self.positions[tp.partition] for tp in partitions}

    def assign(self, partitions: set[int]) -> None:
        self.owned = set(partitions)
        for partition in partitions:
            self.positions[partition] = self.topics.committed.get((self.group, self.source, partition), 0)
        self.handler.partitions_assigned(set(partitions))
        self.restore()

    def restore(self) -> None:
        while self.states.waiting():
            self.handler.restore(self, 1.0)

    def step(self, rng: random.Random) -> bool:
        """Read a few records of one owned partition; False if there was nothing to read."""
        ready = [p for p in sorted(self.owned) if self.positions[p] < len(self.topics.logs[self.source][p])]
        if not ready:
            return False
        partition = rng.choice(ready)
        start = self.positions[partition]
        records = self.topics.logs[self.source][partition][start:start + rng.randint(1, 40)]
        self.handler.begin_batch({})
        for record in records:
            self.handler.handle(record)
        self.positions[partition] = start + len(records)
        self.read[partition] = self.positions[partition]
        return True

    def commit(self) -> None:
        held = self.handler.prepare_commit(dict(self.read))
        self.handler.seal()
        self.output.commit()
        for partition, offset in held.items():
            self.topics.committed[(self.group, self.source, partition)] = offset
        self.read.clear()
        self.handler.emit()

    def abort(self) -> None:
        """A failed transaction: nothing of it is seen, the stage reads again from the committed offsets."""
        self.output.abort()
        self.read.clear()
        self.handler.discard()
        for partition in self.owned:
            self.positions[partition] = self.topics.committed.get((self.group, self.source, partition), 0)
        self.restore()

    def close(self) -> None:
        self.states.close()


UNREADABLE = (b"{not json", b"", b'{"PAYMENT_TYPE": "BITCOIN"}', b"[1, 2]")
"""Values no stage can read as a payment, among the payments: dead-lettered by the anchor, decided by no one."""


def payments_topic(seed: int, count: int, accounts: int, unreadable_every: int = 0) -> Topics:
    topics = Topics()
    for n, example in enumerate(generated(count, seed, MIX, 20, accounts)):
        payment = example.payment
        assert payment.account is not None
        key = payment.account.encode()
        partition = partition_of(key, PARTITIONS)
        if unreadable_every and n % unreadable_every == unreadable_every - 1:
            topics.append("payments", partition, key, UNREADABLE[n % len(UNREADABLE)], (), example.event_ms)
        topics.append("payments", partition, key, encode(payment), (), example.event_ms)
    return topics


def readable(topics: Topics) -> int:
    return sum(1 for log in topics.logs["payments"].values() for r in log if r.value not in UNREADABLE)


def wanted(topics: Topics, ruleset: RuleSet) -> dict[str, Decision]:
    items = [(p, r.offset, decode(r.value), r.timestamp) for p, log in topics.logs["payments"].items() for r in log
             if r.value not in UNREADABLE]
    decisions = reference(items, ruleset, PARTITIONS)
    return {str(payment.payment_id): decisions[(p, o)] for p, o, payment, _ in items}


def run_path(topics: Topics, ruleset: RuleSet, tmp_path: Path, rng: random.Random, faults: bool,
             befell: Counter[str] | None = None) -> dict[str, list[Decision]]:
    """The three stages of two detectors over the payments topic until every payment is routed; routed decisions by id.

    ``befell`` counts the faults the schedule brought about.
    """
    befell = Counter() if befell is None else befell
    plan = Plan(rekeyed_groups(ruleset), "payments", "probes", "answers", (
        StagePlan("anchor", "payments", "g", "g-payments-changelog", None),
        StagePlan("keys", "probes", "g-keys", "g-keys-changelog", "keys"),
        StagePlan("decide", "answers", "g-decide", "g-decide-changelog", "decide")))
    rules = LiveRules(ruleset, None, lambda record, reason: None)
    sources = {"anchor": ("g", "payments"), "keys": ("g-keys", "probes"), "decide": ("g-decide", "answers")}
    folders = {(kind, n): tmp_path / f"{kind}-{n}-0" for kind in sources for n in (0, 1)}

    def start(kind: str, n: int, fresh: bool) -> Stage:
        if fresh:  # a new machine: its store is gone
            folders[(kind, n)] = tmp_path / f"{kind}-{n}-{rng.random()}"
        return Stage(kind, *sources[kind], topics, folders[(kind, n)], rules, plan)

    stages = {(kind, n): start(kind, n, False) for kind in sources for n in (0, 1)}
    for kind in sources:
        stages[(kind, 0)].assign({p for p in range(PARTITIONS) if p % 2 == 0})
        stages[(kind, 1)].assign({p for p in range(PARTITIONS) if p % 2 == 1})
    total = readable(topics)
    clock = [10**13]
    anchor_module.time = cast(Any, type("Clock", (), {"monotonic": staticmethod(lambda: clock[0] / 1000),
                                                        "time": staticmethod(lambda: clock[0] / 1000)}))
    try:
        for _ in range(200_000):
            routed = sum(len(log) for topic in (FRAUD, LEGIT) for log in topics.logs[topic].values())
            if routed >= total and all(not s.read for s in stages.values()):
                break
            key = rng.choice(sorted(stages))
            stage = stages[key]
            roll = rng.random()
            if faults and roll < 0.02:
                stage.abort()
                befell["abort"] += 1
            elif faults and roll < 0.03:  # killed: what it had not committed is lost; its store too, sometimes
                owned = stage.owned
                stage.output.abort()
                stage.close()
                stages[key] = start(key[0], key[1], rng.random() < 0.5)
                stages[key].assign(owned)
                befell["kill"] += 1
            elif faults and roll < 0.04:  # a rebalance: one partition handed to the other detector
                other = stages[(key[0], 1 - key[1])]
                if stage.owned:
                    moved = rng.choice(sorted(stage.owned))
                    stage.commit()
                    other.commit()
                    stage.assign(stage.owned - {moved})
                    other.assign(other.owned | {moved})
                    befell["rebalance"] += 1
            elif not stage.step(rng) or rng.random() < 0.3:
                stage.commit()
                if key[0] == "anchor" and not stage.read:
                    clock[0] += 1000
                    stage.handler.idle(stage)  # quiet partitions read to their end: markers that follow the clock
        else:
            pytest.fail("the stages did not route every payment")
    finally:
        anchor_module.time = __import__("time")
        for stage in stages.values():
            stage.close()
    found: dict[str, list[Decision]] = defaultdict(list)
    for topic in (FRAUD, LEGIT):
        for log in topics.logs[topic].values():
            for record in log:
                data = orjson.loads(record.value or b"")
                decision = Decision.from_dict(data["DECISION"])
                assert decision is not None
                found[str(data["PAYMENT_ID"])].append(decision)
    return found


@pytest.mark.parametrize("seed", range(12))
def test_the_stages_decide_as_one_engine_through_aborts_kills_and_rebalances(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    topics = payments_topic(seed, 1500, 200, unreadable_every=97)
    want = wanted(topics, RECOMMENDED)
    fired = {f.id for decision in want.values() for f in decision.fired}
    assert {"burst", "small-then-large", "device-card-testing"} <= fired, fired  # the account's rules and another key's
    befell: Counter[str] = Counter()
    found = run_path(topics, RECOMMENDED, tmp_path, rng, faults=True, befell=befell)
    assert min(befell[fault] for fault in ("abort", "kill", "rebalance")) >= 3, befell
    twice = {pid: decisions for pid, decisions in found.items() if len(decisions) != 1}
    assert not twice, f"routed other than once: {list(twice)[:5]}"
    differ = {pid: (found[pid][0], want[pid]) for pid in want if pid in found and found[pid][0] != want[pid]}
    assert not differ, next(iter(differ.items()))
    assert found.keys() == want.keys()
    dead = sorted(r.value or b"" for log in topics.logs["dlq"].values() for r in log)
    sent = sorted(r.value or b"" for log in topics.logs["payments"].values() for r in log if r.value in UNREADABLE)
    assert dead == sent and len(sent) >= 10  # each unreadable record dead-lettered once, through every fault


def test_a_probe_after_its_partitions_marker_is_decided_and_says_it_came_late(tmp_path: Path) -> None:
    topics = payments_topic(3, 120, 10)
    run_path(topics, RECOMMENDED, tmp_path, random.Random(3), faults=False)
    # a payment sent to a quiet partition long after its marker followed the clock
    late = next(r for log in topics.logs["payments"].values() for r in log if decode(r.value).device)
    payment = decode(late.value)
    topics.append("payments", late.partition, late.key, encode(payment.__class__(**{
        **{f: getattr(payment, f) for f in payment.__dataclass_fields__}, "payment_id": "late-1"})), (), late.timestamp)
    found = run_path(topics, RECOMMENDED, tmp_path / "again", random.Random(4), faults=False)
    assert len(found["late-1"]) == 1
    assert any("came after its partition's marker" in note for note in found["late-1"][0].notes), found["late-1"][0].notes


def test_the_internal_topics_are_purged_up_to_what_their_reader_committed() -> None:
    deleted: list[dict[TopicPartition, int]] = []
    purger = Purger("g-probes", lambda offsets: deleted.append(dict(offsets)), every_s=0.0)
    purger.committed({0: 10, 1: 4})
    _wait(lambda: purger.purged == 1)
    purger.committed({1: 9})
    _wait(lambda: purger.purged == 2)
    assert deleted == [{TopicPartition("g-probes", 0): 10, TopicPartition("g-probes", 1): 4},
                       {TopicPartition("g-probes", 0): 10, TopicPartition("g-probes", 1): 9}]


def test_a_purge_refused_is_said_once_and_not_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def refuse(offsets: Mapping[TopicPartition, int]) -> None:
        calls.append(1)
        raise NotAuthorizedError("not authorized to delete records", "g-probes")

    purger = Purger("g-probes", refuse, every_s=0.0)
    purger.committed({0: 10})
    _wait(lambda: purger.refused)
    purger.committed({0: 20})
    time.sleep(0.1)
    assert calls == [1]
    assert "keeps them until its retention ends" in caplog.text


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.01)
