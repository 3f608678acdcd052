"""The console's decision latency: detectors' histograms read from their real metrics endpoints, added up, windowed."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from unittest import mock

import pytest

from fraud_pipeline import metrics as metrics_module
from fraud_pipeline.config import MetricsSettings
from fraud_pipeline.console.latency import DecisionLatency, endpoint_url, parse_buckets, quantile
from fraud_pipeline.metrics import DECISION_BUCKETS, Metrics
from fraud_pipeline.metrics import start as start_metrics
from tests.net import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def detector_endpoint() -> tuple[Metrics, str]:
    """A detector's metrics served on a free port, as ``--metrics-port`` serves them."""
    port = free_port()
    return start_metrics("fraud_detector", MetricsSettings(port=port)), f"http://127.0.0.1:{port}/metrics"


def acknowledge(metrics: Metrics, latencies_s: list[float], now_ms: float) -> None:
    """Records routed with these latencies, then their unit acknowledged at ``now_ms`` (the metrics' clock held
    there: a loaded machine's milliseconds between the calls are not in the latencies)."""
    now_ms = float(round(now_ms))
    with mock.patch.object(metrics_module, "time", SimpleNamespace(time=lambda: now_ms / 1000, monotonic=time.monotonic)):
        for latency in latencies_s:
            metrics.decided(round(now_ms - latency * 1000), b"legit", ())
        metrics.sealed()
        metrics.acknowledged()


def test_the_quantiles_are_read_from_the_buckets_as_prometheus_does() -> None:
    buckets = ((0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.98)
    assert quantile(0.5, ((0.1, 0.0), (float("inf"), 4.0))) == 0.1  # past the last finite bound: that bound
    assert quantile(0.5, ((0.1, 0.0), (float("inf"), 0.0))) is None


def test_the_latency_is_of_every_detector_s_decisions_in_the_window() -> None:
    clock = Clock()
    (first, first_url), (second, second_url) = detector_endpoint(), detector_endpoint()
    latency = DecisionLatency([first_url, second_url], window_s=60, clock=clock)
    assert latency.state()["count"] == 0 and latency.state()["p50_ms"] is None

    rng = random.Random(5)
    fast = [rng.uniform(0.012, 0.024) for _ in range(300)]  # all in the 10-25 ms bucket
    slow = [rng.uniform(0.6, 0.9) for _ in range(100)]  # all in the 500 ms - 1 s bucket

    acknowledge(first, fast, time.time() * 1000)
    acknowledge(second, slow, time.time() * 1000)
    latency.scrape()
    state = latency.state()
    assert state["count"] == 400 and state["reachable"] == 2 and state["detectors"] == 2
    assert 10 <= state["p50_ms"] <= 25 and 500 <= state["p99_ms"] <= 1000
    # what the buckets say, independently: the median decision is in 10-25 ms, the 99th percentile in 0.5-1 s
    assert sorted(fast + slow)[199] < 0.025 and sorted(fast + slow)[395] > 0.5

    # A minute on, with no new decisions: nothing in the window.
    clock.now += 61
    latency.scrape()
    assert latency.state()["count"] == 0 and latency.state()["p50_ms"] is None
    # New decisions are counted alone, the older ones being the window's baseline.
    clock.now += 1
    acknowledge(first, [0.003] * 10, time.time() * 1000)
    latency.scrape()
    state = latency.state()
    assert state["count"] == 10 and state["p99_ms"] <= 5


def test_an_endpoint_that_does_not_answer_is_an_error_on_the_page_and_not_a_stop() -> None:
    metrics, url = detector_endpoint()
    gone = f"http://127.0.0.1:{free_port()}/metrics"
    latency = DecisionLatency([url, gone])

    acknowledge(metrics, [0.05] * 4, time.time() * 1000)
    latency.scrape()
    assert latency.state()["count"] == 4 and latency.state()["reachable"] == 1
    assert [e for e in latency.errors if gone in e and "cannot read" in e]


def test_only_http_endpoints_are_read() -> None:
    assert endpoint_url(" http://10.0.0.5:9464/metrics ") == "http://10.0.0.5:9464/metrics"
    for bad in ("file:///etc/passwd", "ftp://host/metrics", "127.0.0.1:9464", "http:///metrics"):
        with pytest.raises(ValueError, match="not an http"):
            endpoint_url(bad)
    with pytest.raises(ValueError):
        DecisionLatency(["file:///etc/passwd"])


def test_a_scrape_without_the_histogram_has_no_buckets() -> None:
    assert parse_buckets("# HELP x y\n# TYPE x counter\nx_total 3\n") is None
    text = "".join(
        f'fraud_decision_latency_seconds_bucket{{le="{bound}"}} {n}\n' for n, bound in enumerate([*DECISION_BUCKETS, "+Inf"])
    )
    buckets = parse_buckets("# TYPE fraud_decision_latency_seconds histogram\n" + text)
    assert buckets is not None and buckets[-1] == (float("inf"), float(len(DECISION_BUCKETS)))
