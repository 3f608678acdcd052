"""The console over https in a real browser (headless Chromium) that trusts the project's CA, against the real cluster.

The local CA (``python -m devcluster console-cert``) issues the console's certificate; Chromium trusts that CA
through an NSS database of its own (``certutil``, from a HOME made for the test), nothing else: no certificate
error is ignored. An analyst signs in and resolves a case; the session cookie is ``__Host-`` prefixed, Secure,
HttpOnly and SameSite=Strict; every response carries HSTS. The same console will not start beyond loopback in
plain http.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.console.test_cases import PASSWORD, open_case
from tests.console.test_console import CHROMEDRIVER, CHROMIUM, wait_for
from tests.integration.conftest import ROOT, Pipeline, read_topic, start_console
from tests.integration.test_lists import REVIEW_RULES
from tests.integration.test_rules import payment, send
from tests.net import free_port

pytestmark = pytest.mark.integration

CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"


@pytest.fixture
def ca_and_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """(the CA's certificate, the console's key and certificate): a CA of the test's own, made by the project's tool."""
    pem = tmp_path / "console.pem"
    made = subprocess.run([sys.executable, "-m", "devcluster", "console-cert", str(pem), "--name", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "KAFKA_CLUSTER_DIR": str(tmp_path / "cluster")})
    assert made.returncode == 0, made.stderr
    assert oct(pem.stat().st_mode & 0o777) == "0o600"
    return tmp_path / "cluster" / "security" / "ca.pem", pem


@pytest.fixture
def trusting_browser(ca_and_certificate: tuple[Path, Path], tmp_path: Path) -> Iterator[WebDriver]:
    """Chromium whose NSS database trusts the CA, and only what the system trusts besides."""
    assert Path(CERTUTIL).exists(), f"{CERTUTIL} is missing: apt-get install libnss3-tools"
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "fraud-pipeline test CA", "-i",
                    str(ca_and_certificate[0])], check=True, timeout=30)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env={**os.environ, "HOME": str(home)}), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_console_over_https_with_the_projects_ca(
    pipeline: Pipeline, trusting_browser: WebDriver, ca_and_certificate: tuple[Path, Path], raw_producer: KafkaProducer,
    tmp_path: Path,
) -> None:
    ca, pem = ca_and_certificate
    users = tmp_path / "users.json"
    subprocess.run([sys.executable, str(ROOT / "fraud_console.py"), "adduser", "ana", "--role", "analyst", "--users",
                    str(users), "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                   check=True)

    # Beyond loopback in plain http: refused, with what to do.
    refused = subprocess.run(pipeline.command("fraud_console", "--host", "0.0.0.0", "--port", str(free_port()),
                                              "--users", str(users)), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 1 and "refusing to serve on 0.0.0.0 in plain http" in refused.stderr, refused.stderr
    assert "--tls-cert" in refused.stderr

    rules = tmp_path / "review.yaml"
    rules.write_text(REVIEW_RULES)
    pipeline.start("fraud_detector", "--rules", str(rules), "--quiet", "--state-dir", str(tmp_path / "state"), group="detector")
    held = payment("ACC-H01", amount=600, to="landlord")
    send(raw_producer, pipeline.topics.payments, [held])
    port = free_port()
    trusted = ssl.create_default_context(cafile=str(ca))
    start_console(pipeline, port, "--users", str(users), "--tls-cert", str(pem), "--tls-key", str(pem), https=trusted)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10, context=trusted) as page:
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    with pytest.raises(OSError):  # the same port in plain http: no answer a browser could take for the console
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)

    driver = trusting_browser
    driver.get(f"https://127.0.0.1:{port}/#cases")
    wait_for(driver, "the sign-in form", lambda: driver.find_element(By.ID, "sign-in-form").is_displayed(), 30)
    assert driver.execute_script("return window.isSecureContext") is True
    driver.find_element(By.ID, "sign-in-user").send_keys("ana")
    driver.find_element(By.ID, "sign-in-password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in-go").click()
    wait_for(driver, "ana signed in", lambda: driver.find_element(By.ID, "who-name").text == "ana", 20)
    cookie = driver.get_cookie("__Host-fraud_console_session")
    assert cookie is not None, driver.get_cookies()
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert driver.get_cookie("fraud_console_session") is None

    open_case(driver, held.payment_id or "")
    driver.find_element(By.ID, "case-claim-go").click()
    wait_for(driver, "the claim", lambda: driver.find_element(By.ID, "resolve-form").is_displayed(), 20)
    Select(driver.find_element(By.ID, "resolve-verdict")).select_by_value("legit")
    driver.find_element(By.ID, "resolve-note").send_keys("known landlord")
    driver.find_element(By.ID, "resolve-go").click()
    wait_for(driver, "the resolution", lambda: "legit · ana" in driver.find_element(By.ID, "case-label").text, 20)
    labels = [json.loads(r.value) for r in read_topic(pipeline.bootstrap, pipeline.topics.labels)]
    assert [(label["payment_id"], label["verdict"], label["analyst"]) for label in labels] == [(held.payment_id, "legit", "ana")]
