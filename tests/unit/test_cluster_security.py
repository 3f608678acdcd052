"""The secured local cluster's settings: least-privilege ACLs per role, the brokers' listeners, the client files."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kafka import errors as kerr

from devcluster import security as cluster_security
from devcluster.cluster import ClusterLayout, _server_properties
from fraud_pipeline.clients import kafka_python
from fraud_pipeline.clients.errors import RefusedError, cannot_reach, tls_failed
from fraud_pipeline.config import TopicSettings
from fraud_pipeline.security import from_file


def grants(role: str, topics: TopicSettings | None = None) -> set[tuple[str, str, str, bool]]:
    return {(a.operation, a.resource_type, a.resource_name, a.prefixed) for a in cluster_security.role_acls(topics)[role]}


def test_each_role_gets_what_its_script_does_and_nothing_more() -> None:
    assert grants("payment-producer") == {("WRITE", "TOPIC", "payments", False), ("IDEMPOTENT_WRITE", "CLUSTER", "kafka-cluster", False)}
    assert grants("fraud-processor") == {
        ("READ", "TOPIC", "fraud_payments", False), ("READ", "GROUP", "fraud-processor", False),
        ("WRITE", "TOPIC", "payments_dlq", False), ("IDEMPOTENT_WRITE", "CLUSTER", "kafka-cluster", False),
    }
    detector = grants("fraud-detector")
    assert ("WRITE", "TRANSACTIONAL_ID", "fraud-detector", True) in detector
    assert {name for op, kind, name, _ in detector if kind == "TOPIC" and op == "WRITE"} == {
        "fraud_payments", "legit_payments", "payments_dlq", "fraud_rules_rejected"}
    assert {name for op, kind, name, _ in detector if kind == "TOPIC" and op == "READ"} == {"payments", "fraud_rules"}
    # nobody but the admin (a super user, no ACL needed) may create, alter or delete anything
    every = {op for role in cluster_security.role_acls().values() for op in (a.operation for a in role)}
    assert every <= {"READ", "WRITE", "DESCRIBE", "IDEMPOTENT_WRITE"}
    assert "admin" not in cluster_security.role_acls()


def test_the_acls_follow_other_topic_names() -> None:
    topics = TopicSettings(payments="p-1", fraud="f-1")
    assert ("WRITE", "TOPIC", "p-1", False) in grants("payment-producer", topics)
    assert ("READ", "TOPIC", "f-1", False) in grants("fraud-processor", topics)


def test_the_secured_nodes_take_clients_on_sasl_ssl_only(tmp_path: Path) -> None:
    layout = ClusterLayout.from_env({"KAFKA_SECURITY": "sasl_ssl", "KAFKA_CLUSTER_DIR": str(tmp_path)})
    props = dict(line.split("=", 1) for line in _server_properties(layout, layout.nodes[0]).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["listeners"] == "CLIENT://localhost:9191,INTERNAL://localhost:29191,CONTROLLER://localhost:19191"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL"
    assert props["listener.name.internal.ssl.client.auth"] == props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert "PLAINTEXT" not in props["listener.security.protocol.map"]
    open_layout = ClusterLayout.from_env({"KAFKA_CLUSTER_DIR": str(tmp_path)})
    assert "authorizer" not in _server_properties(open_layout, open_layout.nodes[0])


def test_a_role_file_reads_back_as_that_roles_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "fraud-detector.properties"
    path.write_text(cluster_security.client_properties("localhost:9191", "fraud-detector", "pw", ca))
    servers, security = from_file(str(path))
    assert servers == "localhost:9191"
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "fraud-detector")
    assert security.ssl_ca_location == str(ca) and security.ssl_check_hostname


def test_refusals_are_named_for_what_went_wrong() -> None:
    wrong_password = kerr.SaslAuthenticationFailedError("invalid credentials")
    refused = kafka_python.refusal(wrong_password, "h:1", "alice")
    assert isinstance(refused, RefusedError) and str(refused).startswith("authentication failed for user alice at h:1: ")
    handshake = kerr.KafkaConnectionError("Handshake failed: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred")
    assert "check security.protocol" in str(kafka_python.refusal(handshake, "h:1", None))
    assert kafka_python.refusal(kerr.KafkaConnectionError("socket disconnected"), "h:1", None) is None
    assert "check security.protocol" not in str(tls_failed("h:1", "certificate verify failed"))


def test_cannot_reach_tells_a_listener_from_nothing(unused_port: int) -> None:
    assert "nothing listens there" in str(cannot_reach(f"localhost:{unused_port}", 10, "timed out", "PLAINTEXT"))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert "does security.protocol match" in str(cannot_reach(f"localhost:{port}", 10, "disconnected", "SASL_SSL"))


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_librdkafka_refusals_stop_a_client_but_a_broken_handshake_only_its_start() -> None:
    from confluent_kafka import KafkaError

    from fraud_pipeline.clients.confluent import _ErrorLog

    errors = _ErrorLog("c", "h:1", "alice")
    errors(KafkaError(KafkaError._TRANSPORT, "sasl_ssl://h:1/1: SSL handshake failed: Disconnected"))
    errors.check()  # a running client goes on: a broker killed mid-handshake looks the same
    with pytest.raises(RefusedError, match="TLS handshake failed at h:1"):
        errors.check(starting=True)
    errors(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials"))
    with pytest.raises(RefusedError, match="authentication failed for user alice at h:1"):
        errors.check()
