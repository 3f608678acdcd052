"""Micro-benchmark of the rule engine: microseconds per payment for Engine.decide and encode_entity.

    python -m bench.rules_engine [--payments N] [--every S ...] [--round-trip]

The recommended rules decide payments of 1,000 and of 100,000 accounts
(generated beforehand; each account pays every ``--every`` simulated seconds
on average: 60 is a busy account, 1 makes the burst rule fire on every payment) with a
MemoryTable that keeps objects (no encoding), after a warm-up of the same
size (median of CHUNKS chunks); then encode_entity and decode_entity are timed
on every entity the table holds (best of REPEATS). No Kafka.
"""

from __future__ import annotations

import argparse
import datetime
import math
import random
import statistics
import time

from fraud_pipeline.backtest import RECOMMENDED
from fraud_pipeline.payment import Payment, generate
from fraud_pipeline.rules import Engine, MemoryTable, decode_entity, encode_entity, load_ruleset

CHUNKS = 20
"""decide() is timed in this many chunks; the median chunk is reported (a shared machine is noisy)."""
REPEATS = 3
"""encode/decode of every entity is timed this many times; the fastest is reported."""


def payments(count: int, accounts: int, rate: float, seed: int = 7) -> list[tuple[Payment, int]]:
    rng = random.Random(seed)
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    made = []
    for n in range(count):
        at = start + datetime.timedelta(seconds=n / rate)
        p = generate(rng, at)
        p = Payment(p.date, p.time, p.payment_type, p.amount, p.to, p.payment_id, f"ACC{rng.randrange(accounts):06d}",
                    p.timestamp_ms)
        assert p.timestamp_ms is not None
        made.append((p, p.timestamp_ms))
    return made


def run(accounts: int, count: int, rate: float, round_trip: bool) -> dict[str, float]:
    engine = Engine(load_ruleset(RECOMMENDED))
    table = MemoryTable(round_trip=round_trip)
    data = payments(2 * count, accounts, rate)
    decide = engine.decide
    for p, at in data[:count]:  # warm-up: the keys exist, windows are full
        decide(p, at, table)
    timed = data[count:]
    chunk = max(1, len(timed) // CHUNKS)
    chunks_us = []
    for c in range(0, len(timed), chunk):
        part = timed[c:c + chunk]
        started = time.perf_counter_ns()
        for p, at in part:
            decide(p, at, table)
        chunks_us.append((time.perf_counter_ns() - started) / len(part) / 1000)
    decide_us = statistics.median(chunks_us)
    values = [table.data[k] for k in table] if not round_trip else [decode_entity(table.data[k]) for k in table]
    encode_us = decode_us = math.inf
    for _ in range(REPEATS):
        started = time.perf_counter_ns()
        encoded = [encode_entity(v) for v in values]
        encode_us = min(encode_us, (time.perf_counter_ns() - started) / len(values) / 1000)
        started = time.perf_counter_ns()
        for raw in encoded:
            decode_entity(raw)
        decode_us = min(decode_us, (time.perf_counter_ns() - started) / len(encoded) / 1000)
    return {"accounts": accounts, "decide_us": decide_us, "encode_us": encode_us, "decode_us": decode_us,
            "entities": len(values), "mean_bytes": sum(map(len, encoded)) / len(encoded), "max_bytes": max(map(len, encoded))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=200_000, help="payments timed per run (as many warm up)")
    parser.add_argument("--every", type=float, nargs="+", default=[60.0, 1.0], help="seconds between an account's payments")
    parser.add_argument("--round-trip", action="store_true", help="a MemoryTable that stores bytes")
    args = parser.parse_args(argv)
    for every in args.every:
        for accounts in (1_000, 100_000):
            r = run(accounts, args.payments, accounts / every, args.round_trip)
            print(f"{accounts:>7} accounts paying every {every:g}s: decide {r['decide_us']:.2f} us/payment; "
                  f"encode_entity {r['encode_us']:.2f} us, decode_entity {r['decode_us']:.2f} us per entity ({r['entities']:.0f} entities, "
                  f"{r['mean_bytes']:.0f} bytes mean, {r['max_bytes']:.0f} max)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
