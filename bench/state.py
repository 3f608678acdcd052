"""The state store at a million accounts: restore from the changelog alone, restore from the local store, memory.

    python -m bench.state [--keys N] [--bootstrap SERVERS]     (also a part of `make bench`)

1. Fills a detector group's changelog with N accounts' state (the entities
   the engine makes for an account with a payment under bench/state_rules.yaml:
   24 h and 30 d windows), spread over 6 partitions as their payments are,
   and puts 600 payments of those accounts in the input.
2. Starts a confluent at-least-once detector with an empty state folder: it
   restores every partition from the changelog alone (``restore_changelog_s``:
   the slowest partition's restore, from its assignment to ready), decides the
   payments, and its RSS is read (``state_rss_mb``).
3. Kills it (kill -9), puts 600 more payments in the input and starts it
   again on the same folder: the local stores and the changelog's tail
   (``restore_local_s``). Beside each: seconds from the process's start to
   its first decision (``*_first_decision_s``); after a kill -9 a group also
   waits for the dead member's session to expire (10 s) before handing its
   partitions over, which the restart here avoids by being a new group member
   only after the old one is gone from the group.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from fraud_pipeline.clients import CONFLUENT, TopicPartition, backend
from fraud_pipeline.config import DEFAULT_BOOTSTRAP_SERVERS
from fraud_pipeline.payment import Payment, encode
from fraud_pipeline.rules import Engine, MemoryTable, load_ruleset
from fraud_pipeline.runtime import Progress
from fraud_pipeline.security import Security

ROOT = Path(__file__).resolve().parent.parent
RULES = Path(__file__).with_name("state_rules.yaml")
PARTITIONS = 6
LIVE = 600
_RESTORED = re.compile(r"partition (\d+) ready: (\d+) change\(s\) from changelog \S+ in ([0-9.]+)s")


def _account(i: int) -> str:
    return f"ACC{i:07d}"


def _payment(i: int, at_ms: int, amount: int = 40) -> Payment:
    return Payment("01/01/2024", "00:00:00", "VISA", amount, "mom", f"bench-{uuid.uuid4().hex}", _account(i), at_ms)


def fill_changelog(bootstrap: str, changelog: str, keys: int, now_ms: int) -> int:
    """The state of ``keys`` accounts in the changelog: account i's entities in partition i % 6; the bytes written."""
    engine = Engine(load_ruleset(RULES))
    template = MemoryTable()
    engine.decide(_payment(0, now_ms - 3_600_000), now_ms - 3_600_000, template)
    entities = {key: encoded for key in template if (encoded := template.encoded(key)) is not None}
    marker = _account(0).encode()
    producer = backend(CONFLUENT, tuple(bootstrap.split(",")), Security()).producer("bench-state-fill", linger_ms=50)
    bar = Progress("changelog", keys)
    written = 0
    for i in range(keys):
        partition = i % PARTITIONS
        account = _account(i).encode()
        for key, value in entities.items():
            if marker in key:
                producer.send(changelog, key.replace(marker, account), value, None, partition)
                written += len(value)
            elif i < PARTITIONS:  # a partition's own entries (its clock), once per partition
                producer.send(changelog, key, value, None, partition)
        if (i + 1) % 50_000 == 0:
            bar(i + 1)
    producer.flush(300)
    producer.close(30)
    bar.close()
    return written


def put_payments(bootstrap: str, topic: str, keys: int, at_ms: int) -> None:
    producer = backend(CONFLUENT, tuple(bootstrap.split(",")), Security()).producer("bench-state-input", linger_ms=5)
    step = max(keys // LIVE, 1)
    for n in range(LIVE):
        i = (n * step) % keys
        payment = _payment(i, at_ms + n)
        producer.send(topic, payment.account.encode() if payment.account else None, encode(payment), None, i % PARTITIONS)
    producer.flush(60)
    producer.close(30)


def _routed(bootstrap: str, topics: list[str]) -> int:
    consumer = backend(CONFLUENT, tuple(bootstrap.split(",")), Security()).consumer("bench-state-count", None, max_records=1)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(2)]
        return sum(end for _, end in consumer.watermarks(tps, 10).values())
    finally:
        consumer.close()


def run_detector(command: list[str], bootstrap: str, routed: list[str], until: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start the detector; return it once ``until`` records are routed, with the seconds to its first decision."""
    before = _routed(bootstrap, routed)
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)
    first = None
    deadline = started + 600
    while True:
        count = _routed(bootstrap, routed)
        if first is None and count > before:
            first = time.monotonic() - started
        if count >= until:
            assert first is not None
            return proc, first
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bench: the detector stopped or stalled; its log: {log}\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def restores(log: Path) -> tuple[float, int]:
    """The slowest partition's restore (s) and the changes applied, from the detector's log."""
    found = [(float(s), int(n)) for _, n, s in _RESTORED.findall(log.read_text())]
    if len(found) < PARTITIONS:
        raise RuntimeError(f"bench: {len(found)} of {PARTITIONS} partitions restored; see {log}")
    return max(s for s, _ in found), sum(n for _, n in found)


def measure(bootstrap: str, keys: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    names = {"in": f"bench-state-in-{run_id}", "fraud": f"bench-state-fraud-{run_id}",
             "legit": f"bench-state-legit-{run_id}", "dlq": f"bench-state-dlq-{run_id}"}
    group = f"bench-state-{run_id}"
    changelog = f"{group}-{names['in']}-changelog"
    admin = backend(CONFLUENT, tuple(bootstrap.split(",")), Security()).admin("bench-state")
    from fraud_pipeline.clients import TopicSpec

    try:
        for name, partitions, compacted in ((names["in"], PARTITIONS, False), (changelog, PARTITIONS, True),
                                            (names["fraud"], 2, False), (names["legit"], 2, False), (names["dlq"], 1, False)):
            admin.create_topic(TopicSpec(name, partitions, 3, 2, compacted=compacted),
                               {"min.insync.replicas": "2", **({"cleanup.policy": "compact"} if compacted else {})})
    finally:
        admin.close()
    now = int(time.time() * 1000)
    fill_changelog(bootstrap, changelog, keys, now)
    put_payments(bootstrap, names["in"], keys, now)
    folder = Path(tempfile.mkdtemp(prefix="bench-state-"))
    logs = Path(tempfile.mkdtemp(prefix="bench-state-logs-"))
    command = [
        sys.executable, str(ROOT / "fraud_detector.py"), "--client", CONFLUENT, "--bootstrap-servers", bootstrap,
        "--payments-topic", names["in"], "--fraud-topic", names["fraud"], "--legit-topic", names["legit"],
        "--dead-letter-topic", names["dlq"], "--rules-topic", f"{names['in']}-rules",
        "--rules-rejected-topic", f"{names['in']}-rules-rejected", "--lists-topic", f"{names['in']}-lists",
        "--list-definitions-topic", f"{names['in']}-list-definitions",
        "--group-id", group, "--guarantee", "at-least-once",
        "--rules", str(RULES), "--state-dir", str(folder), "--quiet",
    ]
    routed = [names["fraud"], names["legit"]]
    result: dict[str, Any] = {"state_keys": keys}
    try:
        proc, first = run_detector(command, bootstrap, routed, LIVE, logs / "changelog.log")
        result["restore_changelog_s"], result["restore_changelog_changes"] = restores(logs / "changelog.log")
        result["restore_changelog_first_decision_s"] = first
        result["state_rss_mb"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        result["state_disk_mb"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(12)  # the dead member's session expires: the restart gets every partition at once
        put_payments(bootstrap, names["in"], keys, now + 60_000)
        proc, first = run_detector(command, bootstrap, routed, 2 * LIVE, logs / "local.log")
        result["restore_local_s"], result["restore_local_changes"] = restores(logs / "local.log")
        result["restore_local_first_decision_s"] = first
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="accounts in the state (default 1000000)")
    parser.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP_SERVERS, metavar="SERVERS")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bootstrap, args.keys), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
