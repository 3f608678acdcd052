"""The secured local cluster's settings: least-privilege ACLs per role, the brokers' listeners, the client files, the certificates."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kafka import errors as kerr

from devcluster import security as cluster_security
from devcluster.cluster import ClusterLayout, _server_properties, argument_file
from devcluster.java import find_java
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
        "fraud_payments", "legit_payments", "payments_dlq", "fraud_rules_rejected", "fraud-detector-"}
    assert {name for op, kind, name, _ in detector if kind == "TOPIC" and op == "READ"} == {
        "payments", "fraud_rules", "fraud_lists", "fraud_list_definitions", "fraud-detector-"}
    # the detector creates only its own internal topics (<group>-...: changelogs, the topics between its stages)
    assert {(name, prefixed) for op, kind, name, prefixed in detector if op == "CREATE"} == {("fraud-detector-", True)}
    assert {name for op, kind, name, _ in detector if op == "DESCRIBE_CONFIGS"} == {"fraud-detector-", "payments"}
    # it deletes the records of its own internal topics once read (delete-records), nothing else
    assert {(name, prefixed) for op, kind, name, prefixed in detector if op == "DELETE"} == {("fraud-detector-", True)}
    # nobody else but the admin (a super user, no ACL needed) may create, alter or delete anything
    every = {op for role, acls in cluster_security.role_acls().items() for op in (a.operation for a in acls) if role != "fraud-detector"}
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


# ---------------------------------------------------------------------------
# The CA and the brokers' certificate (the cryptography package; no openssl binary)


@pytest.fixture
def certificates(tmp_path: Path) -> cluster_security.SecurityFiles:
    files = cluster_security.SecurityFiles(tmp_path / "security")
    cluster_security.ensure_certificates(files)
    return files


def test_the_brokers_certificate_names_localhost_only_and_serves_both_ends_of_mutual_tls(
        certificates: cluster_security.SecurityFiles) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(certificates.ca.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    pem = certificates.broker_keystore.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8, as Kafka's PEM keystore reads it
    broker = x509.load_pem_x509_certificate(pem.encode())
    broker.verify_directly_issued_by(ca)
    assert broker.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cluster_security.BROKER_PRINCIPAL
    assert cluster_security.certificate_names(certificates.broker_keystore) == ["DNS:localhost"]
    usages = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not broker.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    if sys.platform != "win32":
        assert stat.S_IMODE(certificates.ca_key.stat().st_mode) == 0o600
        assert stat.S_IMODE(certificates.broker_keystore.stat().st_mode) == 0o600


def tls_handshake(files: cluster_security.SecurityFiles, name: str) -> str:
    """Dial a TLS server presenting the brokers' certificate at 127.0.0.1 by ``name``, checking it against the CA: '' or the error."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.broker_keystore)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), server_context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        client_context = ssl.create_default_context(cafile=str(files.ca))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_context.wrap_socket(raw, server_hostname=name):
                return ""
        except ssl.SSLCertVerificationError as exc:
            return str(exc.verify_message)
        finally:
            server.join(10)


def test_clients_trust_the_brokers_as_localhost_and_by_no_other_name(certificates: cluster_security.SecurityFiles) -> None:
    assert tls_handshake(certificates, "localhost") == ""
    assert "mismatch" in tls_handshake(certificates, "127.0.0.1")
    assert "mismatch" in tls_handshake(certificates, "broker.example")


def test_an_older_certificate_that_named_an_ip_is_made_again_and_a_current_one_kept(
        certificates: cluster_security.SecurityFiles) -> None:
    files = certificates
    current = files.broker_keystore.read_bytes()
    cluster_security.ensure_certificates(files)
    assert files.broker_keystore.read_bytes() == current
    cluster_security.make_certificate(files.ca_key, files.ca, files.broker_keystore, "broker", ("localhost", "127.0.0.1"))
    assert cluster_security.certificate_names(files.broker_keystore) == ["DNS:localhost", "IP:127.0.0.1"]
    cluster_security.ensure_certificates(files)
    assert cluster_security.certificate_names(files.broker_keystore) == ["DNS:localhost"]
    # One signed by another CA (a CA made again) is replaced too.
    cluster_security.make_ca(files.folder / "other.key", files.folder / "other.pem", "another CA")
    cluster_security.make_certificate(files.folder / "other.key", files.folder / "other.pem", files.broker_keystore, "broker",
                                      ("localhost",))
    cluster_security.ensure_certificates(files)
    assert tls_handshake(files, "localhost") == ""


def test_the_cluster_and_its_clients_dial_localhost_never_an_address(tmp_path: Path) -> None:
    for env in ({"KAFKA_CLUSTER_DIR": str(tmp_path)}, {"KAFKA_CLUSTER_DIR": str(tmp_path), "KAFKA_SECURITY": "sasl_ssl"}):
        layout = ClusterLayout.from_env(env)
        for node in layout.nodes:
            properties = _server_properties(layout, node)
            assert "127.0.0.1" not in properties and "localhost:" in properties
        assert all(server.startswith("localhost:") for server in layout.bootstrap_servers.split(","))
    assert "127.0.0.1" not in cluster_security.client_properties("localhost:9191", "admin", "pw", tmp_path / "ca.pem")


def test_a_ca_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("not a key")
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(cluster_security.SecuritySetupError, match="cannot read the CA") as error:
        cluster_security.make_certificate(tmp_path / "ca.key", tmp_path / "ca.pem", tmp_path / "out.pem", "broker", ("localhost",))
    assert "\n" not in str(error.value)


def test_the_console_writes_labels_lists_claims_and_the_audit_and_nothing_more() -> None:
    console = grants("console")
    assert {name for op, kind, name, _ in console if op == "WRITE" and kind == "TOPIC"} == {
        "fraud_labels", "fraud_lists", "fraud_audit", "fraud_claims"}
    # it adds list entries; only the rules admin defines lists (a block list turned into a watch list is not its to do)
    assert ("READ", "TOPIC", "fraud_list_definitions", False) in console
    assert {role for role, acls in cluster_security.role_acls(None).items() for acl in acls
            if acl.operation == "WRITE" and acl.resource_name == "fraud_list_definitions"} == {"rules-admin"}
    # its changes and their audit records in transactions of its own ids only
    assert {(op, name, prefixed) for op, kind, name, prefixed in console if kind == "TRANSACTIONAL_ID"} == {
        ("WRITE", "fraud-console", True), ("DESCRIBE", "fraud-console", True)}
    assert "fraud_audit" not in {name for op, kind, name, _ in console if op == "READ"}
    assert {op for op, *_ in console} == {"READ", "WRITE", "DESCRIBE", "IDEMPOTENT_WRITE"}


def test_scram_passwords_reach_the_storage_tool_through_a_private_argument_file_never_a_command_line(tmp_path: Path) -> None:
    """The SCRAM users' passwords go to Kafka's StorageTool in a Java argument file (mode 0600, removed afterwards),
    read back by the real Java launcher argument for argument (quotes, backslashes and spaces too): here as system
    properties, which the runtime prints (the project's runtime may have no compiler for a class of the test's own)."""
    java = find_java()
    scram = cluster_security.scram_format_arguments({"fraud-console": "pw_-X9", "odd": 'a"b\\c d'})
    arguments = [f"-Dfraud.arg{n}={value}" for n, value in enumerate(scram)] + ["-XshowSettings:properties", "-version"]
    with argument_file(arguments, tmp_path / "node") as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        command = [java.path, f"@{path}"]
        assert "pw_-X9" not in " ".join(command)
        shown = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    read = dict(line.strip().split(" = ", 1) for line in shown.splitlines() if line.strip().startswith("fraud.arg"))
    assert [read[f"fraud.arg{n}"] for n in range(len(scram))] == scram
    assert not path.exists()
