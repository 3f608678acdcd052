"""The rules' state survives: 24 h windows over 100,000 accounts of history, a detector killed, another taking over.

Each client in turn, on its own pipeline. The input is written first
(a day of history for every account, then the live payments), so every run
reads the same records in the same order. The reference is the single
engine's decisions over the same records, computed in-process (the
backtest's, tests/decisions.py), independent of any cluster run; then, on the
same input:

- one detector is killed (kill -9) inside an open transaction and started
  again on its local store, then killed again and started without it (the
  changelog alone); both kills land in the live payments, where the rules
  fire on what the state holds (in the history every account pays once and
  no rule can fire, whatever the state): every payment's decision (outcome,
  score, rules fired) equals the reference's, none lost, none twice, and the last
  start restored its partitions from the changelog;
- two detectors share the group, each with its own state folder (two
  machines); once the second owns partitions, it is killed: the survivor
  restores the moved partitions from the changelog, and its decisions match
  the reference's too.
"""

from __future__ import annotations

import datetime
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fraud_pipeline.clients import CONFLUENT, backend
from fraud_pipeline.clients.security import Security
from fraud_pipeline.payment import Payment, encode, seoul_date_time
from fraud_pipeline.rules import load_ruleset
from tests.chaos.test_chaos import (
    committed_total,
    finish,
    save_log,
    transaction_at_end,
    wait_for_open_transaction,
    wait_for_progress,
)
from tests.decisions import Verdict, differences, expected, routed
from tests.integration.conftest import Pipeline, for_each_client

pytestmark = [pytest.mark.chaos, pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

ACCOUNTS = 100_000
LIVE = 40_000
LIVE_ACCOUNTS = 5_000
LIVE_SPAN_MS = 60_000
DAY_MS = 24 * 3600 * 1000
RULES = Path(__file__).with_name("day_rules.yaml")
COMMIT_INTERVAL_MS = "1000"
SEED = 17
PARTITIONS = 6
"""The payments topic's partitions (the pipeline fixture's)."""


NOW_MS: dict[int, int] = {}
"""The clock of each seed's input, fixed at its first use: both clients' runs get the same payments, so one reference."""


def history_and_live(seed: int) -> Iterator[Payment]:
    """One payment per account spread over the 23 h before the first use of ``seed`` (in time order), then LIVE
    payments of the first LIVE_ACCOUNTS in the last minute before it."""
    rng = random.Random(seed)
    now = NOW_MS.setdefault(seed, int(time.time() * 1000))
    start = now - 23 * 3600 * 1000
    step = (now - 120_000 - start) / ACCOUNTS
    order = list(range(ACCOUNTS))
    rng.shuffle(order)
    for n, account in enumerate(order):
        yield _payment(rng, f"h{n}", account, int(start + n * step))
    for n in range(LIVE):
        yield _payment(rng, f"l{n}", rng.randrange(LIVE_ACCOUNTS), now - LIVE_SPAN_MS + n * LIVE_SPAN_MS // LIVE)


def _payment(rng: random.Random, pid: str, account: int, at_ms: int) -> Payment:
    date, clock = seoul_date_time(datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC))
    return Payment(date, clock, rng.choice(("VISA", "MASTERCARD", "BITCOIN")), rng.randint(0, 100),
                   rng.choice(("me", "mom", "dad", "friend", "stranger")), pid, f"ACC{account:05d}", at_ms)


def write_input(pipeline: Pipeline, seed: int) -> int:
    producer = backend(CONFLUENT, tuple(pipeline.bootstrap.split(",")), Security()).producer("state-chaos-input", linger_ms=20)
    count = 0
    for payment in history_and_live(seed):
        producer.send(pipeline.topics.payments, (payment.account or "").encode(), encode(payment))
        count += 1
    producer.flush(120)
    producer.close()
    return count


REFERENCES: dict[int, dict[str, Verdict]] = {}


def reference(bootstrap: str, payments_topic: str, seed: int) -> dict[str, Verdict]:
    """Per payment id, the single engine's decision over the input's records, computed in-process (tests/decisions.py):
    the same for both clients' runs (the same payments, NOW_MS, on the same partitions), so computed once per seed."""
    if seed not in REFERENCES:
        REFERENCES[seed] = expected(bootstrap, payments_topic, load_ruleset(RULES), PARTITIONS)
    return REFERENCES[seed]


def detector(pipeline: Pipeline, group: str, tag: str, state_dir: Path, *extra: str) -> Any:
    """A detector of the rules; stopped by ``stop_when_done`` once its group has committed every payment."""
    return pipeline.start(
        "fraud_detector", "--quiet", "--rules", str(RULES), "--state-dir", str(state_dir),
        "--commit-interval-ms", COMMIT_INTERVAL_MS, "--fraud-topic", f"{pipeline.topics.fraud}-{tag}",
        "--legit-topic", f"{pipeline.topics.legit}-{tag}", *extra, group=group,
    )


def stop_when_done(pipeline: Pipeline, group: str, total: int, proc: Any, what: str) -> str:
    """Wait until the group has committed all ``total`` payments, then stop the detector (SIGTERM); its log."""
    wait_for_progress(pipeline, group, total - 1, proc, timeout_s=600)
    proc.send_signal(signal.SIGTERM)
    return finish(proc, what, timeout=120)


def compare(pipeline: Pipeline, tag: str, wanted: dict[str, Verdict], total: int) -> dict[str, int]:
    """Every payment's decision (outcome, score, rules fired) against the reference's: 0 lost, 0 routed twice, 0 different.

    A member killed inside a transaction that no one restarts leaves it open until the transaction
    timeout (60 s) aborts it; until then a read_committed reader stops before it: read again until then.
    """
    deadline = time.monotonic() + 90
    while True:
        got = routed(pipeline.bootstrap, [f"{pipeline.topics.fraud}-{tag}", f"{pipeline.topics.legit}-{tag}"])
        if len(got) >= total or time.monotonic() > deadline:
            break
        time.sleep(5)
    wrong = differences(got, wanted)
    figures = dict(lost=sum(not found for found, _ in wrong.values()), twice=sum(len(found) > 1 for found, _ in wrong.values()),
                   differ=sum(len(found) == 1 for found, _ in wrong.values()),
                   fraud=sum(found[0][0] != "approve" for found in got.values()))
    if figures["lost"]:
        figures["committed"] = committed_total(pipeline, tag)
    if wrong:
        save_log(f"state-wrong-{tag}-{pipeline.client}", "\n".join(f"{pid}\n  got {found}\n  ref {ref}"
                                                                 for pid, (found, ref) in sorted(wrong.items())))
    assert not wrong, (figures, sorted(wrong.items())[:3])
    return figures


def state_survives(pipeline: Pipeline, tmp: Path, figures: list[dict[str, Any]]) -> None:
    total = write_input(pipeline, SEED)
    run: dict[str, Any] = dict(test=f"state: kill -9 and hand-over, 24 h windows ({pipeline.client})", payments=total,
                               accounts=ACCOUNTS)
    started = time.monotonic()
    wanted = reference(pipeline.bootstrap, pipeline.topics.payments, SEED)
    run["reference_s"] = round(time.monotonic() - started, 1)
    assert len(wanted) == total
    run["reference_fraud"] = sum(outcome != "approve" for outcome, _, _ in wanted.values())
    assert 0 < run["reference_fraud"] < total

    # One detector, killed twice inside a transaction: on its local store, then on the changelog alone. The input
    # is all written: each kill comes from the detector's own trace (a transaction with records on the brokers, its
    # end not asked for), at once, while live payments remain (a probe of the routed topics' offsets, slow on a loaded
    # machine, once looked until the input was all routed and no transaction was left to kill in).
    state = tmp / "killed"
    kills: list[int] = []
    at_kill: list[str] = []

    def kill_inside_a_transaction(proc: Any, n: int) -> None:
        wait_for_open_transaction(proc)
        proc.send_signal(signal.SIGKILL)
        killed_log = proc.communicate(timeout=10)[1]
        save_log(f"killed-{pipeline.client}-{n}", killed_log)
        at_kill.append(transaction_at_end(killed_log))
        kills.append(committed_total(pipeline, "killed"))

    proc = detector(pipeline, "killed", "killed", state, "--trace-transactions")
    history = total - LIVE
    first = wait_for_progress(pipeline, "killed", history + LIVE // 8, proc, timeout_s=300)
    kill_inside_a_transaction(proc, 1)
    restarted = time.monotonic()
    proc = detector(pipeline, "killed", "killed", state, "--trace-transactions")
    second = wait_for_progress(pipeline, "killed", max(first, history + 3 * LIVE // 8), proc, timeout_s=300)
    run["first_commit_after_kill_local_s"] = round(time.monotonic() - restarted, 1)
    kill_inside_a_transaction(proc, 2)
    run["killed_after_committed"], run["transaction_at_kill"] = kills, at_kill
    # Both kills in the live payments: past the history, before the end.
    assert all(history < committed < total for committed in kills), run
    shutil.rmtree(state)  # the machine's disk is gone: the changelog alone
    restarted = time.monotonic()
    proc = detector(pipeline, "killed", "killed", state)
    wait_for_progress(pipeline, "killed", second, proc, timeout_s=300)
    run["first_commit_after_kill_changelog_s"] = round(time.monotonic() - restarted, 1)
    log = stop_when_done(pipeline, "killed", total, proc, "detector after the kills")
    save_log(f"killed-{pipeline.client}-last", log)
    run["killed_committed"] = committed_total(pipeline, "killed")
    run["restored_from_changelog"] = sum("change(s) from changelog" in line and " ready: 0 " not in line for line in log.splitlines())
    assert run["restored_from_changelog"] > 0, log[-3000:]  # its store gone, the state came from the changelog
    run.update({f"killed_{k}": v for k, v in compare(pipeline, "killed", wanted, total).items()})

    pair_part(pipeline, tmp, run, wanted, total, figures)


def pair_part(pipeline: Pipeline, tmp: Path, run: dict[str, Any], wanted: dict[str, Verdict], total: int,
              figures: list[dict[str, Any]]) -> None:
    # Two detectors, two state folders (two machines); one killed: the survivor restores its partitions.
    a = detector(pipeline, "pair", "pair", tmp / "machine-a")
    b = detector(pipeline, "pair", "pair", tmp / "machine-b")
    wait_for_progress(pipeline, "pair", total // 3, a, timeout_s=300)
    deadline = time.monotonic() + 120
    while " ready: " not in b.stderr_so_far():  # b owns partitions (their stores restored) before it is killed
        assert b.poll() is None and time.monotonic() < deadline, b.stderr_so_far()[-3000:]
        time.sleep(0.2)
    b.send_signal(signal.SIGKILL)
    save_log(f"pair-{pipeline.client}-killed", b.communicate(timeout=10)[1])
    log = stop_when_done(pipeline, "pair", total, a, "surviving detector")
    save_log(f"pair-{pipeline.client}-survivor", log)
    run["survivor_restores"] = sum("change(s) from changelog" in line and " ready: 0 " not in line for line in log.splitlines())
    assert run["survivor_restores"] > 0, log[-3000:]
    assert committed_total(pipeline, "pair") == total
    run.update({f"pair_{k}": v for k, v in compare(pipeline, "pair", wanted, total).items()})
    figures.append(run)


def test_state_survives_kill9_and_hand_over(pipeline: Pipeline, tmp_path: Path, figures: list[dict[str, Any]]) -> None:
    """One client at a time: with both at once on this 2-core machine, a kafka-python lane twice ended with
    a part of the input not routed: a defect not yet reproduced nor explained (see the closing figures'
    ``killed_committed``), until then run one client at a time."""
    state_survives(pipeline, tmp_path, figures)


@pytest.mark.soak
def test_state_both_clients_at_once(pipelines: dict[str, Pipeline], tmp_path: Path, figures: list[dict[str, Any]]) -> None:
    """The conditions a kafka-python lane once lost part of its input under: both clients' runs at once."""
    for_each_client(pipelines, lambda pipeline: state_survives(pipeline, tmp_path / pipeline.client, figures))
