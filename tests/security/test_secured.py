"""The secured cluster (SASL_SSL, SCRAM-SHA-512, least-privilege ACLs) on both clients: who gets in, who is refused, and how it reads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from devcluster import security as cluster_security
from fraud_pipeline.config import DEFAULT_BOOTSTRAP_SERVERS, ConnectionSettings, Settings
from fraud_pipeline.console.accounts import save_user
from fraud_pipeline.rules.lists import ListSpec, list_record
from fraud_pipeline.rules_cli import publish_records
from fraud_pipeline.security import from_file
from tests.chaos.test_chaos import kill_detector_repeatedly
from tests.integration.conftest import (
    ROOT,
    Pipeline,
    console_json,
    console_state,
    for_each_client,
    read_topic,
    start_console,
)
from tests.integration.test_pipeline import ACCOUNTS, COUNT, SEED, check_seeded_flow, expected_payments
from tests.net import free_port
from tests.security.conftest import SecuredCluster

pytestmark = [
    pytest.mark.security,
    # kafka-python can leave a TLS socket unclosed when a connection drops under it (its selector closes the
    # task, not the socket); the ResourceWarning then surfaces in whichever test runs. As in tests/chaos.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

REFUSAL_DEADLINE_S = 30.0
"""A script that cannot get in says so and exits within this long: never a retry loop."""
FINAL_REFUSAL_S = 15.0
"""A wrong password or an untrusted certificate: under kafka-python's 20 s bootstrap timeout, so both clients
must give up at the first refusal rather than keep trying."""


def refused(pipeline: Pipeline, script: str, *extra: str, env: dict[str, str] | None = None,
            config: str | None = None, bootstrap: str | None = None, deadline_s: float = REFUSAL_DEADLINE_S) -> tuple[str, float]:
    """Run a script that must be refused: it exits non-zero within the deadline; its stderr and how long it took."""
    if config is not None:
        pipeline = dataclasses.replace(pipeline, client_configs={script: config})
    command = pipeline.command(script, *extra)
    if bootstrap is not None:
        command[command.index("--bootstrap-servers") + 1] = bootstrap
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=REFUSAL_DEADLINE_S + 30, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))
    took = time.monotonic() - began
    assert done.returncode != 0, f"{script} was let in:\n{done.stderr[-2000:]}"
    assert took < deadline_s, f"{script} took {took:.1f}s to give up (at most {deadline_s:.0f}s):\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr, took


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert lines, f"no error line in:\n{stderr[-2000:]}"
    return lines[-1]


def test_the_pipeline_runs_over_sasl_ssl_and_the_console_reads_it_with_its_read_only_role(secured_pipeline: Pipeline) -> None:
    check_seeded_flow(secured_pipeline)
    expected_fraud = sum(p.payment_type == "BITCOIN" for p in expected_payments(SEED, COUNT, ACCOUNTS))
    pipeline = secured_pipeline
    port = free_port()
    start_console(pipeline, port)  # as the console user: read and describe only
    detector_group = pipeline.group("detector")  # as check_seeded_flow names it
    deadline = time.monotonic() + 60
    while True:
        state = console_state(port)
        groups = {g["group"]: g for g in state["groups"]}
        totals = state["totals"]
        if (totals == {"payments": COUNT, "fraud": expected_fraud, "legit": COUNT - expected_fraud, "dead_letters": 0}
                and detector_group in groups and groups[detector_group]["lag"] == 0):
            break
        assert time.monotonic() < deadline, f"the console never showed the pipeline: {totals}, {state['errors']}, {groups}"
        time.sleep(1)
    assert len(state["alerts"]) == min(expected_fraud, 100) and state["errors"] == []
    status, brokers = console_json(port, "/api/brokers")
    assert status == 200 and [b["port"] for b in brokers["brokers"]] == [9191, 9192, 9193]
    status, topics = console_json(port, "/api/topics")
    assert status == 200 and pipeline.topics.payments in {t["name"] for t in topics["topics"]}
    fraud_partition = f"/api/messages?topic={pipeline.topics.fraud}&partition=0&offset=0&count=3"
    status, messages = console_json(port, fraud_partition)
    assert status == 200 and len(messages["messages"]) == 3
    # The role reads nothing it has no business with: the rejected-rules topic is refused, with the reason.
    status, refused = console_json(port, f"/api/messages?topic={pipeline.topics.rules_rejected}&partition=0&count=3")
    assert status == 403 and "not authorized" in refused["error"], refused


def test_detector_kill9_exactly_once_over_sasl_ssl(secured_pipelines: dict[str, Pipeline], figures: list[dict[str, Any]]) -> None:
    """Both clients at once, each script as its own role. A detector's restart takes longer over TLS and SCRAM:
    ~67 s of flow at 300 payments/s leaves room for the three kills."""
    for_each_client(secured_pipelines,
                    lambda pipeline: kill_detector_repeatedly(pipeline, "exactly-once", 303, figures, rate="300", over=" over SASL_SSL"))


def test_a_wrong_password_is_refused_with_the_user_and_servers(secured_pipeline: Pipeline) -> None:
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "1", env={"KAFKA_SASL_PASSWORD": "not-the-password"},
                           deadline_s=FINAL_REFUSAL_S)
    line = error_line(stderr)
    assert "authentication failed" in line.lower() and cluster_security.PRODUCER in line, line
    assert secured_pipeline.bootstrap in line, line
    assert "not-the-password" not in stderr
    print(f"\n{secured_pipeline.client} wrong password ({took:.1f}s): {line}")


def test_a_role_reading_what_it_may_not_is_refused(secured_pipeline: Pipeline) -> None:
    """The producer's user may write payments only: as a fraud processor it may not read the fraud topic."""
    producer_file = secured_pipeline.client_configs["payment_producer"]
    stderr, took = refused(secured_pipeline, "fraud_processor", "--idle-timeout", "5", config=producer_file)
    line = error_line(stderr)
    assert re.search(rf"not authorized to (read|describe) .*{re.escape(secured_pipeline.topics.fraud)}", line), line
    print(f"\n{secured_pipeline.client} producer reads fraud ({took:.1f}s): {line}")


def test_a_role_writing_what_it_may_not_is_refused_and_writes_nothing(secured_pipeline: Pipeline) -> None:
    """A processor's user may write dead letters only: as a producer it may not write payments."""
    processor_file = secured_pipeline.client_configs["fraud_processor"]
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "20", "--rate", "0", config=processor_file)
    line = error_line(stderr)
    assert re.search(rf"not authorized to write .*{re.escape(secured_pipeline.topics.payments)}", line), line
    assert read_topic(secured_pipeline.bootstrap, secured_pipeline.topics.payments, committed_only=False) == []
    print(f"\n{secured_pipeline.client} processor writes payments ({took:.1f}s): {line}")


@pytest.fixture(scope="module")
def stranger_ca() -> Iterator[str]:
    """A CA that signed nothing of this cluster."""
    folder = tempfile.mkdtemp(prefix="stranger-ca-")
    try:
        cluster_security.make_ca(Path(folder) / "ca.key", Path(folder) / "ca.pem", "a stranger's CA")
        yield str(Path(folder) / "ca.pem")
    finally:
        shutil.rmtree(folder)


def test_a_wrong_ca_is_a_tls_error(secured_pipeline: Pipeline, stranger_ca: str) -> None:
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "1", env={"KAFKA_SSL_CA_LOCATION": stranger_ca},
                           deadline_s=FINAL_REFUSAL_S)
    line = error_line(stderr)
    assert "TLS" in line and "certificate verify failed" in line.lower(), line
    print(f"\n{secured_pipeline.client} wrong CA ({took:.1f}s): {line}")


def dialled_by_address(bootstrap: str) -> str:
    """The brokers' ``host:port`` list with each host replaced by the loopback address its listener answers on.

    The address reaches the brokers whatever names the machine gives itself, and it is not in their
    certificate by construction: that names ``localhost`` only, no address (devcluster.security).
    """
    dialled = []
    for server in bootstrap.split(","):
        host, _, port = server.rpartition(":")
        for *_, address in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM):
            try:
                socket.create_connection((str(address[0]), int(address[1])), timeout=2).close()
            except OSError:
                continue
            ip = str(address[0])
            dialled.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
            break
        else:
            pytest.fail(f"no address of {host} answers on port {port}")
    return ",".join(dialled)


def test_a_certificate_for_another_name_is_a_tls_error(secured_pipeline: Pipeline, secured_cluster: SecuredCluster) -> None:
    chain = x509.load_pem_x509_certificates(secured_cluster.files.broker_keystore.read_bytes())
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"] and not names.get_values_for_type(x509.IPAddress)
    bootstrap = dialled_by_address(secured_cluster.bootstrap)
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "1", bootstrap=bootstrap, deadline_s=FINAL_REFUSAL_S)
    line = error_line(stderr)
    assert "TLS" in line and re.search("hostname|mismatch|certificate verify failed", line, re.I), line
    print(f"\n{secured_pipeline.client} certificate for another name ({took:.1f}s): {line}")


def test_sasl_settings_against_a_plaintext_listener_are_a_clear_error(secured_pipeline: Pipeline) -> None:
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "1", bootstrap=DEFAULT_BOOTSTRAP_SERVERS)
    line = error_line(stderr)
    assert "security.protocol" in line, line
    print(f"\n{secured_pipeline.client} SASL_SSL client, PLAINTEXT listener ({took:.1f}s): {line}")


def test_plaintext_against_the_sasl_ssl_listener_is_a_clear_error(secured_pipeline: Pipeline, tmp_path: Path) -> None:
    plain = tmp_path / "plaintext.properties"
    plain.write_text(f"bootstrap.servers={secured_pipeline.bootstrap}\nsecurity.protocol=PLAINTEXT\n")
    stderr, took = refused(secured_pipeline, "payment_producer", "--count", "1", config=str(plain))
    line = error_line(stderr)
    assert "security.protocol" in line, line
    print(f"\n{secured_pipeline.client} PLAINTEXT client, SASL_SSL listener ({took:.1f}s): {line}")


def test_the_console_role_writes_lists_labels_and_the_audit_and_nothing_else(secured_pipeline: Pipeline, tmp_path: Path) -> None:
    """The console's user writes what analysts do: a list entry and the audit trail go through; rules, payments and
    list definitions do not (it cannot turn a block list into a watch list: only the rules admin defines lists)."""
    console_file = secured_pipeline.client_configs["fraud_console"]
    as_console = dataclasses.replace(secured_pipeline, client_configs={"fraud_rules": console_file})
    secured_pipeline.run("fraud_rules", "lists", "create", "mules", "--field", "TO", "--level", "block")  # the rules admin
    added = as_console.run("fraud_rules", "lists", "add", "mules", "PAYEE-S", "--by", "ada")
    assert "added 1 value(s) of TO to mules (block): PAYEE-S" in added.stdout
    # redefining the list: refused by the brokers in the definitions topic, by every reader in the entries topic
    stderr, _ = refused(secured_pipeline, "fraud_rules", "lists", "create", "mules", "--field", "TO", "--level", "watch",
                        config=console_file)
    line = error_line(stderr)
    assert re.search(rf"cannot write to {re.escape(secured_pipeline.topics.list_definitions)}: .*authoriz", line, re.I), stderr[-2000:]
    settings = Settings(ConnectionSettings(tuple(secured_pipeline.bootstrap.split(",")), secured_pipeline.client,
                                           from_file(console_file)[1]), secured_pipeline.topics)
    key, value = list_record(ListSpec("mules", "TO", "watch"))
    publish_records(settings, secured_pipeline.topics.lists, [(key, value)])  # the console's user may write here
    shown = secured_pipeline.run("fraud_rules", "lists", "show", "mules")
    assert "| mules | block | TO | PAYEE-S |" in shown.stdout, shown.stdout
    assert "lists are defined in the list definitions topic" in shown.stderr, shown.stderr
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"id": "big", "when": {"field": "AMOUNT", "op": ">=", "value": 90}}))
    stderr, _ = refused(secured_pipeline, "fraud_rules", "publish", str(rule), "--reason", "test", config=console_file)
    line = error_line(stderr)
    assert re.search(rf"cannot write to {re.escape(secured_pipeline.topics.rules)}: .*authoriz", line, re.I), stderr[-2000:]
    stderr, _ = refused(secured_pipeline, "payment_producer", "--count", "1", config=console_file)
    line = error_line(stderr)
    assert "not authorized" in line and secured_pipeline.topics.payments in line, line

    # Signing in writes the audit trail with the console's own user.
    users = tmp_path / "users.json"
    save_user(users, "ana", "analyst", "correct horse battery")
    port = free_port()
    console = start_console(secured_pipeline, port, "--users", str(users))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/login", method="POST", data=json.dumps({"user": "ana", "password": "correct horse battery"}).encode(),
        headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    audit = [json.loads(r.value) for r in read_topic(secured_pipeline.bootstrap, secured_pipeline.topics.audit)]
    assert [(a["user"], a["action"]) for a in audit] == [("ana", "sign-in")]
    console.terminate()
    console.communicate(timeout=30)
