from __future__ import annotations

import functools
import random

import pytest

from bench.run import GOALS, RULES_RATIOS, THROUGHPUT_RATIOS, Histogram, floor_ratios, ratio_table
from fraud_pipeline.config import ConsumerSettings


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


def test_latency_goals_are_set_against_the_python_floor_of_the_same_run() -> None:
    def hist(*values_ms: int) -> Histogram:
        histogram = Histogram()
        for value in values_ms:
            histogram.record(value * 1000)
        return histogram

    floor = hist(*[2] * 98, 10, 10)
    latency = {"python_one_hop": floor, "confluent_alo": hist(*[12] * 98, 30, 30), "confluent": hist(*[80] * 100),
               "detector_alo": hist(*[5] * 98, 40, 40)}
    ratios = floor_ratios(latency)
    assert set(ratios) <= set(GOALS)
    near = functools.partial(pytest.approx, rel=1 / 32)  # the histogram's buckets
    assert ratios["confluent_alo_p50-floor_p50_ms"] == near(10)
    assert ratios["confluent_alo_p99/floor_p99"] == near(3)
    assert ratios["alo_p99/floor_p99"] == near(4)
    assert ratios["(confluent_eos_p50-floor_p50)/(commit_interval+30ms)"] == near(78 / (ConsumerSettings.commit_interval_ms + 30))
    assert floor_ratios({"confluent_alo": floor}) == {}, "no floor measured, no floor goal"
