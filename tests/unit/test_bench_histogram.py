from __future__ import annotations

import random

from bench.run import GOALS, RULES_RATIOS, THROUGHPUT_RATIOS, Histogram, ratio_table


def test_percentiles_are_within_the_bucket_precision() -> None:
    rng = random.Random(1)
    values = [rng.randint(100, 200_000) for _ in range(50_000)]
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    values.sort()
    for p in (50, 99, 99.9):
        exact_ms = values[int(p / 100 * len(values)) - 1] / 1000
        assert abs(histogram.percentile_ms(p) - exact_ms) <= exact_ms / 32
    assert histogram.max_us == values[-1] and histogram.total == len(values)


def test_small_values_are_exact() -> None:
    histogram = Histogram()
    for value in (0, 1, 2, 63):
        histogram.record(value)
    assert sorted(histogram.counts) == [0, 1, 2, 63]


def test_every_ratio_the_bench_computes_has_a_goal() -> None:
    """The ratio table looks each ratio's goal up: one missing ended a whole run at its last step."""
    names = set(THROUGHPUT_RATIOS) | set(RULES_RATIOS)
    assert names <= set(GOALS)
    table = ratio_table(dict.fromkeys(names, 1.0))
    assert all(f"| {name} | 1.00 |" in table for name in names)
