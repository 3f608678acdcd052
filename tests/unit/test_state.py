"""The state stores and their changelog, against an in-memory changelog log with Kafka's transaction semantics.

The property: whatever the crash, abort and rebalance points, the state a
partition is restored to (from the changelog alone, or from its local store
and the changelog's tail) equals the state of an uninterrupted run, and the
decisions after it are identical.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_pipeline.payment import Payment
from fraud_pipeline.rules import Decision, Engine, MemoryTable, decode_entity, encode_entity, parse_ruleset
from fraud_pipeline.state import PartitionStates, PartitionStore
from fraud_pipeline.state import partitions as partitions_module
from fraud_pipeline.state.changelog import Restorer
from fraud_pipeline.state.partitions import INPUT_OFFSET_KEY
from fraud_pipeline.state.table import PartitionTable
from tests.unit.records import TOPIC, ChangelogLog, GroupConsumer, LogReader

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
