"""The replay behind a rule change's evidence: payments per second through the live and the proposed set.

    python -m bench.replay [--payments N] [--rate R] [--accounts A]

Seeded scenario payments (the backtest's generator, ``--rate`` payments a
second over ``--accounts`` accounts) are made beforehand; then
``evidence.evidence`` decides each of them with the recommended rules and
with a proposal that changes one of them (``burst`` from more than 5 to more
than 4 payments a minute), as the evidence of a proposal does. No Kafka.
``replay_payments_per_s`` counts each payment once (both sets decide it);
``replay_payments_per_cpu_s`` divides by the CPU seconds the process used,
so it is the figure per core (the replay runs on one).
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from typing import Any

from fraud_pipeline.backtest import RECOMMENDED, generated
from fraud_pipeline.evidence import evidence
from fraud_pipeline.rules import load_ruleset, parse_rule

PROPOSED_RULE = "burst"


def proposal() -> tuple[Any, Any]:
    """The recommended set and the same set with ``burst`` one payment stricter (its next version)."""
    live = load_ruleset(RECOMMENDED)
    rule = live.get(PROPOSED_RULE)
    assert rule is not None and rule.source is not None, f"the recommended rules have no {PROPOSED_RULE}"
    source = dict(rule.source)
    aggregate = dict(source["aggregate"])
    aggregate["value"] = aggregate["value"] - 1
    changed = parse_rule(source | {"aggregate": aggregate, "version": rule.version + 1})
    return live, live.with_rule(changed)


def measure(payments: int = 100_000, rate: float = 200.0, accounts: int = 10_000) -> dict[str, Any]:
    """Seconds and CPU seconds of one evidence run over ``payments`` generated payments, and its rates."""
    examples = list(islice(generated(payments, 7, "default", rate, accounts), payments))
    live, proposed = proposal()
    started, cpu = time.perf_counter(), time.process_time()
    found = evidence(examples, live, proposed)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {"replay_payments": len(examples), "replay_seconds": seconds, "replay_cpu_s": cpu_s,
            "replay_payments_per_s": len(examples) / seconds, "replay_payments_per_cpu_s": len(examples) / cpu_s,
            "replay_changed": found.changed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=100_000, help="payments replayed (default %(default)s)")
    parser.add_argument("--rate", type=float, default=200.0, help="their simulated payments a second (default %(default)s)")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts paying them (default %(default)s)")
    args = parser.parse_args(argv)
    figures = measure(args.payments, args.rate, args.accounts)
    print(", ".join(f"{key}={value:,.1f}" if isinstance(value, float) else f"{key}={value:,}" for key, value in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
