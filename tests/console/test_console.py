"""The console in a real browser (Debian's headless Chromium through Selenium) against the real cluster.

Seeded payments with fraud scenarios go through the detector with the
recommended rules, plus records it must dead-letter; then the page is checked
as a person would check it: the alert list is the fraud topic with its
reasons, the counts match the topics, the detector's lag is 0, the message
browser shows a chosen record's headers, a bad offset shows an error. A
screenshot of each view is saved under results/console/.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from fraud_pipeline.console.monitor import parse_decision_header
from fraud_pipeline.rules import RULESETS_DIR
from tests.integration.conftest import ROOT, Pipeline, console_json, read_topic, start_console
from tests.net import free_port

RECOMMENDED = RULESETS_DIR / "recommended.yaml"
T = TypeVar("T")
SCREENSHOTS = ROOT / "results" / "console"
COUNT = 1200
MIX = "burst=0.005,small-then-large=0.01,large-to-stranger=0.01,takeover=0.01,big-spender=0.01"
BAD_RECORDS = [b"not json at all", b'{"AMOUNT": "lots"}', b"\xff\xfe"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from the system's packages (.ci/run installs chromium and chromium-driver)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


DETACHED = "does not belong to the document"
"""chromedriver's word for an element the page replaced while a command ran on it (a stale element by another name)."""


def fresh(action: Callable[[], T]) -> T:
    """``action``, with its elements looked up again while the page replaces them under it (at most 10 times)."""
    for attempt in range(10):
        try:
            return action()
        except StaleElementReferenceException:
            pass
        except WebDriverException as exc:
            if DETACHED not in str(exc):
                raise
        time.sleep(0.1 * (attempt + 1))
    return action()


def wait_for(driver: WebDriver, what: str, check: Callable[[], object], timeout_s: float = 60) -> None:
    try:
        # A table the page rebuilds between two looks leaves stale elements: look again.
        WebDriverWait(driver, timeout_s, poll_frequency=0.3, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: fresh(check))
    except TimeoutException:
        shown = [box.text for box in driver.find_elements(By.CSS_SELECTOR, ".error") if box.is_displayed() and box.text]
        raise AssertionError(f"the page never showed {what}; the errors it shows: {shown or 'none'}") from None


def number(element: WebElement) -> int:
    """A tile's figure; -1 while the page has none yet (empty, or the console's dash)."""
    text = element.text.replace(",", "").strip()
    return int(text) if text.lstrip("-").isdigit() else -1


def show(driver: WebDriver, view: str) -> WebElement:
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-view="{view}"]').click()
    section = driver.find_element(By.ID, f"view-{view}")
    wait_for(driver, f"the {view} view", section.is_displayed, 10)
    return section


def screenshot(driver: WebDriver, client: str, view: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{client}-{view}.png"))


def test_the_console_shows_the_pipeline_as_the_topics_hold_it(pipeline: Pipeline, browser: WebDriver) -> None:
    pipeline.run("payment_producer", "--count", str(COUNT), "--rate", "0", "--seed", "23", "--accounts", "5000",
                 "--scenarios", MIX, "--quiet")
    raw = KafkaProducer(bootstrap_servers=pipeline.bootstrap.split(","), acks="all")
    for value in BAD_RECORDS:
        raw.send(pipeline.topics.payments, value, key=b"bad")
    raw.flush()
    raw.close()
    group = "fraud-detector"
    # The detector keeps running, its metrics served: the console shows its decision latency.
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    detector = pipeline.start("fraud_detector", "--quiet", "--rules", str(RECOMMENDED), "--metrics-port", str(metrics_port),
                              group=group)
    fraud, legit, dead = routed(pipeline, COUNT, len(BAD_RECORDS))
    assert 0 < len(fraud) < 100  # every alert fits the page's list

    port = free_port()
    start_console(pipeline, port, "--rules", str(RECOMMENDED), "--detector-metrics", metrics_url)
    driver = browser
    driver.get(f"http://127.0.0.1:{port}/")
    client = pipeline.client

    # Decision latency: every payment the detector routed, percentiles within the buckets its endpoint serves.
    wait_for(driver, f"the decision latency of {COUNT} payments",
             lambda: number(driver.find_element(By.ID, "latency-count")) == COUNT, 30)
    p50, p99 = (float(driver.find_element(By.ID, f"latency-{p}").text.replace(",", "")) for p in ("p50", "p99"))
    buckets = served_buckets(metrics_url)
    assert buckets[-1][1] == COUNT
    for q, shown in ((0.5, p50), (0.99, p99)):
        lower, upper = bucket_of(buckets, q)
        assert lower * 1000 - 1 <= shown <= upper * 1000 + 1, (q, shown, lower, upper)  # shown rounded to the ms
    assert detector.poll() is None

    # Pipeline: counts over the last 15 minutes equal the topics; the detector's group has caught up.
    expected = {"total-payments": COUNT + len(BAD_RECORDS), "total-fraud": len(fraud), "total-legit": len(legit),
                "total-dead-letters": len(dead)}

    def totals() -> dict[str, int]:
        return {tile: number(driver.find_element(By.ID, tile)) for tile in expected}

    wait_for(driver, f"the topics' counts {expected}", lambda: totals() == expected)
    expected_rate = f"{100 * len(fraud) / (len(fraud) + len(legit)):.1f}"
    assert expected_rate in driver.find_element(By.ID, "fraud-rate").text
    total_lag = f'#lag-table tr.group-total[data-group="{pipeline.group(group)}"] .lag'
    partition_lag = f'#lag-table tr[data-group="{pipeline.group(group)}"][data-partition] .lag'
    wait_for(driver, "the detector's lag at 0", lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, total_lag)] == ["0"])
    wait_for(driver, "the detector's lag at 0 on every partition",
             lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, partition_lag)] == ["0"] * pipeline.topics.payments_partitions)
    assert "live" in driver.find_element(By.ID, "status").text
    screenshot(driver, client, "pipeline")

    # Alerts: exactly the fraud topic's records, each with its reasons; a click shows the whole record.
    show(driver, "alerts")
    alerts = driver.find_elements(By.CSS_SELECTOR, "#alerts-table tr.alert")
    shown = {(int(a.get_attribute("data-partition") or -1), int(a.get_attribute("data-offset") or -1)) for a in alerts}
    assert shown == {(r.partition, r.offset) for r in fraud}
    for alert in alerts:
        assert "@" in alert.text, f"an alert without its rules' reasons: {alert.text}"
    chosen = fraud[0]
    reasons = [rule for rule, _, mode in parse_decision_header(dict(chosen.headers)["decision"]) if mode == "enabled"]
    selector = f'#alerts-table tr.alert[data-partition="{chosen.partition}"][data-offset="{chosen.offset}"]'
    row = driver.find_element(By.CSS_SELECTOR, selector)
    assert all(rule in row.text for rule in reasons)
    row.click()
    detail = driver.find_element(By.ID, "record-detail")
    wait_for(driver, "the chosen alert's record", lambda: str(chosen.offset) in detail.text and "decision" in detail.text, 10)
    assert json.loads(chosen.value)["PAYMENT_ID"] in detail.text
    screenshot(driver, client, "alerts")

    # Rules: the recommended set, each rule's hits as the routed records' decision headers count them.
    show(driver, "rules")
    hits: Counter[str] = Counter()
    for record in fraud + legit:
        hits.update(rule for rule, _, _ in parse_decision_header(dict(record.headers)["decision"]))
    rule_rows = driver.find_elements(By.CSS_SELECTOR, "#rules-table tr[data-rule]")
    table = {r.get_attribute("data-rule"): number(r.find_element(By.CSS_SELECTOR, ".hits")) for r in rule_rows}
    assert table == {rule: hits.get(rule, 0) for rule in table} and "bitcoin" in table and hits["bitcoin"] > 0
    assert "shadow" in driver.find_element(By.CSS_SELECTOR, '#rules-table tr[data-rule="bitcoin"]').text
    screenshot(driver, client, "rules")

    # Dead letters: each rejected record with its error.
    show(driver, "dead-letters")
    letters = driver.find_elements(By.CSS_SELECTOR, "#dead-letters-table tr.dead-letter")
    assert len(letters) == len(BAD_RECORDS)
    errors = {dict(r.headers)["error"].decode() for r in dead}
    assert all(any(error[:40] in letter.text for error in errors) for letter in letters)
    screenshot(driver, client, "dead-letters")

    # Kafdrop's view: brokers, topics, groups.
    show(driver, "brokers")
    wait_for(driver, "3 brokers", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#brokers-table tbody tr")) == 3, 20)
    screenshot(driver, client, "brokers")
    show(driver, "topics")
    topic_row = f'#topics-table tr[data-topic="{pipeline.topics.fraud}"]'
    wait_for(driver, "the fraud topic", lambda: bool(driver.find_elements(By.CSS_SELECTOR, topic_row)), 20)
    driver.find_element(By.CSS_SELECTOR, topic_row).click()
    wait_for(driver, "its partitions", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#partitions-table tbody tr"))
             == pipeline.topics.routed_partitions, 20)
    screenshot(driver, client, "topics")
    show(driver, "groups")
    group_row = f'#groups-table tr[data-group="{pipeline.group(group)}"]'
    wait_for(driver, "the detector's group", lambda: bool(driver.find_elements(By.CSS_SELECTOR, group_row)), 20)
    driver.find_element(By.CSS_SELECTOR, group_row).click()
    wait_for(driver, "its offsets", lambda: pipeline.topics.payments in driver.find_element(By.ID, "group-detail").text, 20)
    screenshot(driver, client, "groups")

    # Message browser: the chosen record with its headers; then an offset out of range.
    show(driver, "messages")
    choose_topic(driver, pipeline.topics.fraud)
    browse(driver, chosen.partition, chosen.offset, 5)
    message = f'#browse-results .message[data-offset="{chosen.offset}"]'
    decision = dict(chosen.headers)["decision"].decode()
    payment_id = json.loads(chosen.value)["PAYMENT_ID"]

    def chosen_shown() -> bool:
        found = driver.find_elements(By.CSS_SELECTOR, message)
        if not found:
            return False
        headers = found[0].find_element(By.CSS_SELECTOR, ".headers").text
        return "decision" in headers and decision in headers and payment_id in found[0].find_element(By.CSS_SELECTOR, ".value").text

    wait_for(driver, "the chosen message with its headers and value", chosen_shown, 20)
    error = driver.find_element(By.ID, "browse-error")
    assert not error.is_displayed(), f"the message browser shows an error: {error.text}"
    screenshot(driver, client, "messages")
    # A record that is not JSON is shown as its text.
    choose_topic(driver, pipeline.topics.dead_letter)
    browse(driver, 0, 0, 5)
    wait_for(driver, "the dead letters' raw values",
             lambda: "not json at all" in driver.find_element(By.ID, "browse-results").text, 20)
    choose_topic(driver, pipeline.topics.fraud)
    browse(driver, chosen.partition, 10_000_000, 5)
    wait_for(driver, "the out-of-range error", lambda: error.is_displayed() and "out of range" in error.text, 20)
    assert "Traceback" not in driver.page_source
    screenshot(driver, client, "messages-error")

    # The same browser API refuses other bad input with a line for the page, never a stack trace.
    fraud_topic = pipeline.topics.fraud
    for query, status, text in (
        ("topic=no-such-topic&partition=0", 400, "does not exist"),
        (f"topic={fraud_topic}&partition=7", 400, f"partition 7 does not exist: {fraud_topic} has partitions 0-1"),
        (f"topic={fraud_topic}&partition=0&count=lots", 400, "count must be a whole number"),
        (f"topic={fraud_topic}&partition=0&count=100000", 400, "count must be between 1 and 500"),
        (f"topic={fraud_topic}", 400, "partition is required"),
    ):
        got_status, body = console_json(port, f"/api/messages?{query}")
        assert (got_status, text in body.get("error", "")) == (status, True), (query, got_status, body)

    detector.terminate()  # a stop request: the detector commits what it handled and exits 0
    _, stderr = detector.communicate(timeout=60)
    assert detector.returncode == 0, stderr[-3000:]


def routed(pipeline: Pipeline, payments: int, dead_letters: int, timeout_s: float = 120) -> tuple[list[Any], list[Any], list[Any]]:
    """The fraud, legit and dead-letter topics' records once the running detector has routed every payment."""
    deadline = time.monotonic() + timeout_s
    while True:
        fraud = read_topic(pipeline.bootstrap, pipeline.topics.fraud, timeout_s=5)
        legit = read_topic(pipeline.bootstrap, pipeline.topics.legit, timeout_s=5)
        dead = read_topic(pipeline.bootstrap, pipeline.topics.dead_letter, timeout_s=5)
        if (len(fraud) + len(legit), len(dead)) == (payments, dead_letters):
            return fraud, legit, dead
        assert time.monotonic() < deadline, f"routed {len(fraud) + len(legit)} of {payments}, {len(dead)} dead letters"
        time.sleep(1)


def served_buckets(url: str) -> list[tuple[float, float]]:
    """The detector's fraud_decision_latency_seconds buckets, read from its endpoint with Prometheus' own parser."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sorted((float(sample.labels["le"]), sample.value)
                  for family in text_string_to_metric_families(text) if family.name == "fraud_decision_latency_seconds"
                  for sample in family.samples if sample.name.endswith("_bucket"))


def bucket_of(buckets: list[tuple[float, float]], q: float) -> tuple[float, float]:
    """The bounds of the bucket that holds the ``q`` quantile."""
    lower = 0.0
    for bound, count in buckets:
        if count >= q * buckets[-1][1]:
            return lower, bound if bound != float("inf") else lower
        lower = bound
    raise AssertionError(f"no bucket holds the {q} quantile: {buckets}")


def choose_topic(driver: WebDriver, topic: str) -> None:
    """Pick the browser's topic, again if the page refilled its list meanwhile (it reloads it with the view)."""

    def chosen() -> bool:
        select = driver.find_element(By.ID, "browse-topic")
        if topic not in select.text:
            return False
        Select(select).select_by_value(topic)
        return driver.find_element(By.ID, "browse-topic").get_attribute("value") == topic

    wait_for(driver, f"topic {topic} in the message browser", chosen, 20)


def browse(driver: WebDriver, partition: int, offset: int, count: int) -> None:
    Select(driver.find_element(By.ID, "browse-from")).select_by_value("offset")
    for field, value in (("browse-partition", partition), ("browse-offset", offset), ("browse-count", count)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "browse-go").click()
