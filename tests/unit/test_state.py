"""The state stores and their changelog, against an in-memory changelog log with Kafka's transaction semantics.

The property: whatever the crash, abort and rebalance points, the state a
partition is restored to (from the changelog alone, or from its local store
and the changelog's tail) equals the state of an uninterrupted run, and the
decisions after it are identical.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_pipeline.clients import TopicPartition
from fraud_pipeline.payment import Payment
from fraud_pipeline.rules import Decision, Engine, MemoryTable, decode_entity, encode_entity, parse_ruleset
from fraud_pipeline.state import PartitionStates, PartitionStore
from fraud_pipeline.state import partitions as partitions_module
from fraud_pipeline.state.changelog import Restorer
from fraud_pipeline.state.partitions import INPUT_OFFSET_KEY
from fraud_pipeline.state.table import PartitionTable
from tests.unit.records import TOPIC, ChangelogLog, GroupConsumer, LogReader, TransactionalLog, TransactionalReader

RULES = parse_ruleset({
    "threshold": 1,
    "rules": [
        {"id": "burst", "aggregate": {"function": "count", "group_by": "ACCOUNT", "window_s": 60, "op": ">", "value": 3}},
        {"id": "day", "aggregate": {"function": "sum", "field": "AMOUNT", "group_by": "ACCOUNT", "window_s": 86400,
                                    "op": ">", "value": 400}},
        {"id": "payees", "aggregate": {"function": "distinct", "field": "TO", "group_by": "ACCOUNT", "window_s": 3600,
                                       "op": ">=", "value": 3}},
        {"id": "probe", "sequence": {"group_by": "ACCOUNT", "within_s": 120, "first": {"field": "AMOUNT", "op": "<", "value": 5},
                                     "then": {"field": "AMOUNT", "op": ">=", "value": 90}}},
    ],
})


def payments(seed: int, count: int) -> list[tuple[Payment, int]]:
    rng = random.Random(seed)
    at = 1_700_000_000_000
    out = []
    for n in range(count):
        at += rng.choice((100, 2_000, 30_000, 600_000))
        out.append((Payment("01/01/2024", "00:00:00", "VISA", rng.choice((1, 3, 40, 95, 200)), rng.choice(("me", "mom", "x", "y")),
                            f"p{n}", f"ACC{rng.randrange(4)}", at), at))
    return out


def states(folder: Path, log: ChangelogLog) -> PartitionStates:
    return PartitionStates(folder, "g", "payments", TOPIC, LogReader(log), encode_entity, decode_entity)  # type: ignore[arg-type]


def restored(states_: PartitionStates, consumer: GroupConsumer | None = None) -> None:
    consumer = consumer or GroupConsumer()
    while states_.waiting():
        states_.restore(consumer, 1.0)  # type: ignore[arg-type]


def snapshot(store: PartitionStore) -> dict[bytes, bytes]:
    return dict(store.items())


def reference(stream: list[tuple[Payment, int]]) -> tuple[list[Decision], dict[bytes, bytes]]:
    engine = Engine(RULES)
    table = MemoryTable(round_trip=True)
    decisions = [engine.decide(payment, at, table) for payment, at in stream]
    return decisions, {key: encoded for key in table if (encoded := table.encoded(key)) is not None}


Step = tuple[str, int]
ACTIONS = ["commit", "abort", "crash-in-transaction", "crash", "crash-and-lose-store", "crash-offsets-not-stable", "rebalance"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    steps=st.lists(st.tuples(st.sampled_from(ACTIONS),
                             st.integers(1, 12)), min_size=1, max_size=12),
)
def test_restored_state_and_decisions_equal_an_uninterrupted_run(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                                                 steps: list[Step]) -> None:
    folder = tmp_path_factory.mktemp("state")
    stream = payments(seed, sum(n for _, n in steps) + 20)
    expected_decisions, expected_state = reference(stream)
    log = ChangelogLog()
    engine = Engine(RULES)
    current = states(folder, log)
    current.assigned({0})
    restored(current)
    decided: dict[int, Decision] = {}
    committed = 0  # the input offset committed with the changelog
    for action, n in [*steps, ("commit", len(stream))]:
        batch = stream[committed:committed + n]
        for offset, (payment, at) in enumerate(batch, committed):
            decided[offset] = engine.decide(payment, at, current.tables[0])
        current.send_changes(log.send, {0: committed + len(batch)})
        if action == "abort":
            log.abort()
            current.discard()
            restored(current)
            continue
        if action == "crash-in-transaction":
            # kill -9 with the transaction open: the next producer with the transactional id aborts it
            log.abort()
            current.tables[0].store.close()
            current = states(folder, log)
            current.assigned({0})
            restored(current)
            continue
        log.commit()  # the transaction: changes and input offsets together
        committed += len(batch)
        if action.startswith("crash"):
            # kill -9 after the commit, before the local store was written: a new process starts over
            current.tables[0].store.close()
            if action == "crash-and-lose-store":
                shutil.rmtree(folder / "g")
            current = states(folder, log)
            current.assigned({0})
            group = GroupConsumer()
            # The transaction's offsets may not be visible yet to the next owner (its markers come after it).
            group.committed_offsets[0] = committed - len(batch) if action == "crash-offsets-not-stable" else committed
            restored(current, group)
            assert group.seeks == [(0, committed)]  # read from where the state is, also when the offsets were stale
            continue
        current.committed()
        if action == "rebalance":
            current.assigned(set())
            current.assigned({0})
            restored(current)
    assert committed == len(stream)
    assert [decided[i] for i in range(len(stream))] == expected_decisions
    assert snapshot(current.tables[0].store) == expected_state
    current.close()


PARTITIONS = 3
ACCOUNTS = 9
MEMBER_EXAMPLES = int(os.environ.get("STATE_EXAMPLES", "200"))
"""Examples of the two-member property (``STATE_EXAMPLES=2000 make unit`` for a longer search)."""


def partitioned(seed: int, count: int) -> list[list[tuple[Payment, int]]]:
    """``count`` payments of ACCOUNTS accounts, each account's on partition ``account % PARTITIONS`` (as keyed)."""
    rng = random.Random(seed)
    at = 1_700_000_000_000
    streams: list[list[tuple[Payment, int]]] = [[] for _ in range(PARTITIONS)]
    for n in range(count):
        at += rng.choice((100, 2_000, 30_000, 600_000))
        account = rng.randrange(ACCOUNTS)
        streams[account % PARTITIONS].append(
            (Payment("01/01/2024", "00:00:00", "VISA", rng.choice((1, 3, 40, 95, 200)), rng.choice(("me", "mom", "x", "y")),
                     f"p{n}", f"ACC{account}", at), at))
    return streams


class SharedGroup:
    """The consumer group's committed input offsets, shared by its members."""

    def __init__(self) -> None:
        self.committed_offsets: dict[int, int] = {}


@dataclass
class Member:
    """One detector of the group: its own state folder, transactional producer, consumer position and open transaction."""

    name: str
    folder: Path
    log: TransactionalLog
    group: SharedGroup
    states: PartitionStates = field(init=False)
    engine: Engine = field(default_factory=lambda: Engine(RULES))
    next: dict[int, int] = field(default_factory=dict)
    """The consumer's position per owned partition."""
    pending: dict[tuple[int, int], Decision] = field(default_factory=dict)
    """Decisions of the open transaction, by (partition, offset)."""

    def __post_init__(self) -> None:
        self.states = PartitionStates(self.folder, "g", "payments", TOPIC, TransactionalReader(self.log), encode_entity,  # type: ignore[arg-type]
                                      decode_entity)

    # The consumer calls PartitionStates makes: the group's committed offsets, this member's position and seeks.
    def committed(self, partitions: list[TopicPartition], timeout_s: float) -> dict[TopicPartition, int | None]:
        return {tp: self.group.committed_offsets.get(tp.partition) for tp in partitions}

    def position(self, tp: TopicPartition) -> int:
        return self.next[tp.partition]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp.partition] = offset

    @property
    def owned(self) -> set[int]:
        return set(self.states.tables)

    def own(self, partitions: set[int]) -> None:
        """A rebalance: own exactly ``partitions``; the new ones are read from the group's committed offset, once restored."""
        for partition in self.states.assigned(partitions):
            self.next[partition] = self.group.committed_offsets.get(partition, 0)
        for partition in set(self.next) - partitions:
            del self.next[partition]
        while self.states.waiting():
            self.states.restore(self, 1.0)  # type: ignore[arg-type]

    def handle(self, streams: list[list[tuple[Payment, int]]], partition: int, n: int) -> None:
        if partition not in self.owned:
            return
        start = self.next[partition]
        for offset, (payment, at) in enumerate(streams[partition][start:start + n], start):
            self.pending[(partition, offset)] = self.engine.decide(payment, at, self.states.tables[partition])
            self.next[partition] = offset + 1

    def commit(self, decided: dict[tuple[int, int], Decision]) -> None:
        """The transaction: the changes, the input offsets and the routed decisions together."""
        self.states.send_changes(self.log.sender(self.name), dict(self.next))
        self.log.commit(self.name)
        self.group.committed_offsets.update(self.next)
        decided.update(self.pending)
        self.pending.clear()
        self.states.committed()

    def abort(self) -> None:
        self.states.send_changes(self.log.sender(self.name), dict(self.next))
        self.log.abort(self.name)
        self.pending.clear()
        self.states.discard()
        for partition in self.owned:
            self.next[partition] = self.group.committed_offsets.get(partition, 0)  # the stage seeks back to them
        while self.states.waiting():
            self.states.restore(self, 1.0)  # type: ignore[arg-type]

    def crash(self, lose_store: bool) -> Member:
        """kill -9 with the transaction open (the next producer of the transactional id aborts it); a new process on the
        same folder (or on a new disk) takes the same partitions."""
        self.log.abort(self.name)
        owned = self.owned
        for table in self.states.tables.values():
            table.store.close()
        if lose_store:
            shutil.rmtree(self.folder, ignore_errors=True)
        again = Member(self.name, self.folder, self.log, self.group)
        again.own(owned)
        return again


MEMBER_ACTIONS = ["handle", "handle", "handle", "commit", "abort", "crash", "crash-and-lose-store", "move", "move-dirty",
                  "compact"]


@settings(max_examples=MEMBER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    steps=st.lists(st.tuples(st.sampled_from(MEMBER_ACTIONS), st.integers(0, 1), st.integers(0, PARTITIONS - 1),
                             st.integers(1, 8)), min_size=1, max_size=25),
    checkpoint=st.booleans(),
)
def test_two_members_through_crashes_aborts_moves_and_compaction_decide_as_one_engine(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, seed: int,
        steps: list[tuple[str, int, int, int]], checkpoint: bool) -> None:
    """Two detectors of one group, each with its own state folder, over three partitions: partitions move between them
    (after a commit, or with the old owner's transaction aborted), members crash (with or without their store) and
    abort, the changelog carries transaction markers and aborted records and is compacted. Every payment's committed
    decision equals one engine's over its partition in offset order, and every partition's final store equals that
    engine's state."""
    monkeypatch.setattr(partitions_module, "OFFSET_CHECKPOINT_S", 0.0 if checkpoint else 3600.0)
    folder = tmp_path_factory.mktemp("members")
    streams = partitioned(seed, 40)
    engine = Engine(RULES)
    tables = [MemoryTable(round_trip=True) for _ in range(PARTITIONS)]
    expected = {(partition, offset): engine.decide(payment, at, tables[partition])
                for partition, stream in enumerate(streams) for offset, (payment, at) in enumerate(stream)}
    log = TransactionalLog()
    group = SharedGroup()
    members = [Member(name, folder / name, log, group) for name in ("a", "b")]
    members[0].own({0, 2})
    members[1].own({1})
    decided: dict[tuple[int, int], Decision] = {}
    for action, who, partition, n in steps:
        member = members[who]
        if action == "handle":
            member.handle(streams, partition, n)
        elif action == "commit":
            member.commit(decided)
        elif action == "abort":
            member.abort()
        elif action.startswith("crash"):
            members[who] = member.crash(lose_store=action == "crash-and-lose-store")
        elif action.startswith("move"):
            owner = next(m for m in members if partition in m.owned)
            other = members[1 - members.index(owner)]
            if action == "move":
                owner.commit(decided)  # a cooperative hand-over: the unit is committed before the partition is revoked
            else:
                owner.abort()  # the owner's transaction aborted (fenced) as the partition moves
            owner.own(owner.owned - {partition})
            other.own(other.owned | {partition})
        elif action == "compact":
            log.compact()
    for member in members:  # everything read and committed
        for partition in member.owned:
            member.handle(streams, partition, len(streams[partition]))
        member.commit(decided)
    assert {p for m in members for p in m.owned} == set(range(PARTITIONS))
    assert decided == expected
    for member in members:
        for partition in member.owned:
            wanted = {key: encoded for key in tables[partition] if (encoded := tables[partition].encoded(key)) is not None}
            assert snapshot(member.states.tables[partition].store) == wanted
        member.states.close()


def test_a_store_is_never_ahead_of_kafka_and_an_abort_undoes_only_what_it_touched(tmp_path: Path) -> None:
    log = ChangelogLog()
    current = states(tmp_path, log)
    current.assigned({0, 1})
    restored(current)
    engine = Engine(RULES)
    stream = payments(1, 6)
    for payment, at in stream[:3]:
        engine.decide(payment, at, current.tables[0])
    current.send_changes(log.send, {0: 3})
    log.commit()
    current.committed()
    before = snapshot(current.tables[0].store)
    assert before and not snapshot(current.tables[1].store)
    for payment, at in stream[3:]:
        engine.decide(payment, at, current.tables[0])
    current.send_changes(log.send, {0: 6})
    assert snapshot(current.tables[0].store) == before  # sent, not committed: the store waits
    log.abort()
    current.discard()
    restored(current)
    assert snapshot(current.tables[0].store) == before
    assert len(log.records[0]) == len(before) + 1  # and the input offset committed with them
    current.close()


def test_restore_reads_only_the_changelog_tail_past_the_local_store(tmp_path: Path) -> None:
    log = ChangelogLog()
    first = states(tmp_path, log)
    first.assigned({2})
    restored(first)
    engine = Engine(RULES)
    for payment, at in payments(2, 30):
        engine.decide(payment, at, first.tables[2])
        first.send_changes(log.send, {})
        log.commit()
        first.committed()
    before = snapshot(first.tables[2].store)
    first.close()  # a clean stop records the changelog offset the store covers
    again = states(tmp_path, log)
    again.assigned({2})
    restored(again)
    assert again.restored[2][0] == 0  # nothing read from the changelog
    again.close()
    shutil.rmtree(tmp_path / "g")
    lost = states(tmp_path, log)
    lost.assigned({2})
    restored(lost)
    assert 0 < lost.restored[2][0] <= len(log.records[2])
    assert snapshot(lost.tables[2].store) == before
    lost.close()


@pytest.mark.parametrize("exactly_once", [True, False])
def test_a_restored_partition_is_read_from_the_state_only_under_exactly_once(tmp_path: Path, exactly_once: bool) -> None:
    """A kill during an at-least-once flush can leave the changelog's input offset acknowledged and a routed record
    not: the partition must then be read from the group's committed offset, or that record is never routed."""
    log = ChangelogLog()
    first = PartitionStates(tmp_path, "g", "payments", TOPIC, LogReader(log), encode_entity, decode_entity,  # type: ignore[arg-type]
                            exactly_once=exactly_once)
    first.assigned({0})
    restored(first)
    engine = Engine(RULES)
    for payment, at in payments(3, 5):
        engine.decide(payment, at, first.tables[0])
    first.send_changes(log.send, {0: 5})
    log.commit()  # the changelog's records acknowledged; the process is killed before the group's commit
    first.tables[0].store.close()
    again = PartitionStates(tmp_path, "g", "payments", TOPIC, LogReader(log), encode_entity, decode_entity,  # type: ignore[arg-type]
                            exactly_once=exactly_once)
    again.assigned({0})
    group = GroupConsumer()
    group.committed_offsets[0] = 2
    restored(again, group)
    # exactly-once: the group's offsets may lag the transaction's markers, the state's are the truth;
    # at-least-once: no seek, the consumer reads on from the group's committed offset 2.
    assert group.seeks == ([(0, 5)] if exactly_once else [])
    again.close()


def test_units_in_flight_reach_the_store_in_order_and_never_ahead_of_what_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At-least-once does not wait for a commit's acknowledgements: the next unit is handled, sealed and sent meanwhile.

    Each unit reaches the local store once acknowledged, oldest first; what a later unit changed stays readable in
    memory; the store's changelog offset never covers a unit not yet in it.
    """
    monkeypatch.setattr(partitions_module, "OFFSET_CHECKPOINT_S", 0.0)  # the changelog's end read at every commit
    stream = [(payment, at) for payment, at in payments(7, 40) if payment.account == "ACC1"][:3]
    log = ChangelogLog()
    pipelined = states(tmp_path / "pipelined", log)
    pipelined.assigned({0})
    restored(pipelined)
    engine = Engine(RULES)
    table = pipelined.tables[0]
    decided = []
    for offset, (payment, at) in enumerate(stream[:2], start=1):  # units 0 and 1: handled, sealed, sent, acknowledged
        decided.append(engine.decide(payment, at, table))
        pipelined.send_changes(log.send, {0: offset})
        pipelined.seal()
        log.commit()
    decided.append(engine.decide(*stream[2], table))  # handled, not yet sent
    after_one = ChangelogLog()
    one = states(tmp_path / "one", after_one)  # the same first payment, committed alone
    one.assigned({0})
    restored(one)
    Engine(RULES).decide(*stream[0], one.tables[0])
    one.send_changes(after_one.send, {0: 1})
    after_one.commit()
    one.committed()

    pipelined.committed()  # unit 0 acknowledged
    assert snapshot(table.store) == snapshot(one.tables[0].store)
    assert table.store.changelog_offset() == 0, "unit 1 is in the changelog, not in the store: its offset is not the store's"
    assert table.dirty
    pipelined.committed()  # unit 1 acknowledged
    assert table.store.get(INPUT_OFFSET_KEY) == b"2"
    assert table.store.changelog_offset() == len(log.records[0])
    assert [d.to_json() for d in decided] == [d.to_json() for d in reference(stream)[0]]
    pipelined.send_changes(log.send, {0: 3})
    pipelined.seal()
    log.commit()
    pipelined.committed()
    assert not table.dirty
    assert snapshot(table.store) == reference(stream)[1] and table.store.get(INPUT_OFFSET_KEY) == b"3"
    pipelined.close()
    one.close()


def test_a_store_ahead_of_its_changelog_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PartitionStore(tmp_path / "p")
    store.write({b"ACCOUNT=A": b"stale"}, 50)
    restorer = Restorer(LogReader(ChangelogLog()), TOPIC)  # type: ignore[arg-type]
    assert restorer.start(0, store)
    assert dict(store.items()) == {} and store.changelog_offset() == 0
    assert "ahead of changelog" in caplog.text
    store.close()


def test_a_window_longer_than_the_changelog_keeps_is_refused() -> None:
    from fraud_pipeline.errors import RuleError
    from fraud_pipeline.topics import RetentionLimits, _retention_ms

    assert _retention_ms({"cleanup.policy": "compact", "retention.ms": "1000"}) is None  # compacted: every key's last value
    kept = _retention_ms({"cleanup.policy": "compact,delete", "retention.ms": "86400000"})
    limits = RetentionLimits("g-payments-changelog", kept, "payments", 7 * 86_400_000)
    limits.check(RULES)  # 24 h windows: kept
    month = parse_ruleset({"rules": [{"id": "month", "aggregate": {"function": "count", "group_by": "ACCOUNT",
                                                                   "window_s": 2592000, "op": ">", "value": 3}}]})
    with pytest.raises(RuleError, match=r"rule 'month': its window of 2.592e[+]06s is longer than topic g-payments-changelog keeps"):
        limits.check(month)
    assert "less than the longest window" in (limits.replay_short(month) or "")
    assert limits.replay_short(RULES) is None


def test_a_key_the_store_lacks_is_looked_up_once_until_the_store_changes(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    lookups = []
    real_get = store.get

    def counted(key: bytes) -> bytes | None:
        lookups.append(key)
        return real_get(key)

    store.get = counted  # type: ignore[method-assign]
    table = PartitionTable(0, store, lambda value: value, lambda raw: raw)
    assert table.get(b"k") is None and table.get(b"k") is None
    assert lookups == [b"k"]  # the absence is remembered
    table.put(b"k", b"v")
    table.seal(1)
    table.committed({b"k": b"v"}, None, 1)
    assert table.get(b"k") == b"v" and lookups == [b"k"]
    store.write({b"k": None})  # the store changed underneath (a restore), then says so
    table.forget_cache()
    assert table.get(b"k") is None and lookups == [b"k", b"k"]
    store.close()


FULL_DISK_WRITER = """
import resource, sys
from pathlib import Path
from fraud_pipeline.errors import PipelineError
from fraud_pipeline.state.store import PartitionStore
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # no file past 256 KiB: as a full disk to RocksDB
store = PartitionStore(Path(sys.argv[1]))
written = 0
try:
    for n in range(100_000):
        store.write({b"k%d" % n: bytes(200)}, n)
        written = n + 1
except PipelineError as exc:
    print(written, exc)
"""


def test_a_store_that_cannot_write_says_so_and_keeps_what_it_wrote(tmp_path: Path) -> None:
    """A disk that takes no more (a file-size limit stands in for it: RocksDB gets "File too large" where a full disk
    gives "No space left on device"): the write fails with a PipelineError naming the store and what to do, and the
    store, opened again without the limit, holds every write that succeeded."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(tmp_path / "p0")], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    written, message = done.stdout.strip().split(" ", 1)
    assert 0 < int(written) < 100_000
    assert f"cannot write the state store {tmp_path / 'p0'}: IO error" in message
    assert "free the disk, then start the detector again" in message
    store = PartitionStore(tmp_path / "p0")
    assert store.changelog_offset() == int(written) - 1
    assert store.get(b"k%d" % (int(written) - 1)) == bytes(200)
    store.close()
