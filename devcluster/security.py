"""The secured local cluster's trust and access: a CA, the brokers' certificate, one SCRAM user per role, least-privilege ACLs.

``python -m devcluster up`` with ``KAFKA_SECURITY=sasl_ssl`` uses this module:

- ``.cluster/security/ca.pem``: a CA generated once with ``openssl``; it signs
  the brokers' certificate (SAN ``localhost`` and ``127.0.0.1``), which the
  clients check, hostname included.
- one SCRAM-SHA-512 user per role, with a random password generated per
  cluster, and ``.cluster/security/<role>.properties``: the client config file
  each script takes with ``--client-config`` (the folder is git-ignored and
  readable by its owner only).
- ACLs (:func:`role_acls`): each role may do what its script does, nothing
  more; the brokers refuse everything else, as ``allow.everyone.if.no.acl.found``
  stays false.

Clients reach the brokers on SASL_SSL only. The brokers talk to each other and
to the controllers over mutual TLS, as the principal ``broker`` (the CN of
their certificate).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fraud_pipeline.clients.types import Acl
from fraud_pipeline.config import TopicSettings

MECHANISM = "SCRAM-SHA-512"
BROKER_PRINCIPAL = "broker"
ADMIN = "admin"
PRODUCER = "payment-producer"
DETECTOR = "fraud-detector"
FRAUD_PROCESSOR = "fraud-processor"
LEGIT_PROCESSOR = "legit-processor"
RULES_ADMIN = "rules-admin"
CONSOLE = "console"
ROLES = (ADMIN, PRODUCER, DETECTOR, FRAUD_PROCESSOR, LEGIT_PROCESSOR, RULES_ADMIN, CONSOLE)
"""One SCRAM user per role; ``admin`` is a super user, for the tool itself."""
CERT_DAYS = 3650


class SecuritySetupError(Exception):
    """The certificates or users could not be made; one line for the user."""


@dataclass(frozen=True)
class Groups:
    """Consumer groups (and the detector's transactional id prefix) the ACLs name."""

    detector: str = DETECTOR
    """The detector's group; its transactional ids start with it too."""
    fraud_processor: str = FRAUD_PROCESSOR
    legit_processor: str = LEGIT_PROCESSOR


def role_acls(topics: TopicSettings | None = None, groups: Groups | None = None) -> dict[str, list[Acl]]:
    """Each role's ALLOW entries, for the default topics and groups or others: exactly what its script does.

    READ and WRITE on a topic imply DESCRIBE. The detector's transactional ids
    are ``<group>-<host>-<n>``: allowed by prefix.
    """
    topics = TopicSettings() if topics is None else topics
    groups = Groups() if groups is None else groups

    def topic(role: str, operation: str, name: str) -> Acl:
        return Acl(f"User:{role}", operation, "TOPIC", name)

    def group(role: str, name: str) -> Acl:
        return Acl(f"User:{role}", "READ", "GROUP", name)

    def idempotent(role: str) -> Acl:
        return Acl(f"User:{role}", "IDEMPOTENT_WRITE", "CLUSTER", "kafka-cluster")

    return {
        PRODUCER: [topic(PRODUCER, "WRITE", topics.payments), idempotent(PRODUCER)],
        DETECTOR: [
            topic(DETECTOR, "READ", topics.payments),
            topic(DETECTOR, "READ", topics.rules),
            *(topic(DETECTOR, "WRITE", name) for name in (topics.fraud, topics.legit, topics.dead_letter, topics.rules_rejected)),
            group(DETECTOR, groups.detector),
            Acl(f"User:{DETECTOR}", "WRITE", "TRANSACTIONAL_ID", groups.detector, prefixed=True),
            Acl(f"User:{DETECTOR}", "DESCRIBE", "TRANSACTIONAL_ID", groups.detector, prefixed=True),
            idempotent(DETECTOR),
        ],
        FRAUD_PROCESSOR: [
            topic(FRAUD_PROCESSOR, "READ", topics.fraud), group(FRAUD_PROCESSOR, groups.fraud_processor),
            topic(FRAUD_PROCESSOR, "WRITE", topics.dead_letter), idempotent(FRAUD_PROCESSOR),
        ],
        LEGIT_PROCESSOR: [
            topic(LEGIT_PROCESSOR, "READ", topics.legit), group(LEGIT_PROCESSOR, groups.legit_processor),
            topic(LEGIT_PROCESSOR, "WRITE", topics.dead_letter), idempotent(LEGIT_PROCESSOR),
        ],
        # `fraud_rules.py list` and `mode` read the rules they change.
        RULES_ADMIN: [topic(RULES_ADMIN, "WRITE", topics.rules), topic(RULES_ADMIN, "READ", topics.rules), idempotent(RULES_ADMIN)],
        # fraud_console.py reads; it sees the pipeline's groups and their offsets, and the brokers (DescribeCluster).
        CONSOLE: [
            *(topic(CONSOLE, "READ", name) for name in (topics.payments, topics.fraud, topics.legit, topics.dead_letter,
                                                        topics.rules)),
            *(Acl(f"User:{CONSOLE}", "DESCRIBE", "GROUP", name)
              for name in (groups.detector, groups.fraud_processor, groups.legit_processor)),
            Acl(f"User:{CONSOLE}", "DESCRIBE", "CLUSTER", "kafka-cluster"),
        ],
    }


@dataclass(frozen=True)
class SecurityFiles:
    """Where the secured cluster's certificates, passwords and client files live."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def broker_keystore(self) -> Path:
        """The brokers' private key and certificate chain, one PEM file (``ssl.keystore.type=PEM``)."""
        return self.folder / "broker.pem"

    @property
    def passwords(self) -> Path:
        return self.folder / "passwords.json"

    def role_file(self, role: str) -> Path:
        return self.folder / f"{role}.properties"


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SecuritySetupError("openssl not found: install it (e.g. apt-get install openssl) to make the cluster's certificates")
    result = subprocess.run([openssl, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SecuritySetupError(f"openssl {args[0]} failed: {result.stderr.strip()[:300]}")


def make_ca(key: Path, cert: Path, name: str) -> None:
    """A self-signed CA certificate and its key."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(CERT_DAYS),
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))


def make_certificate(ca_key: Path, ca_cert: Path, out: Path, common_name: str, names: tuple[str, ...]) -> None:
    """``out``: a private key and a certificate signed by the CA, for ``names`` (DNS names or IPs), in one PEM file."""
    alt = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)
    with tempfile.TemporaryDirectory() as tmp:
        key, csr, crt, ext = (Path(tmp) / name for name in ("key.pem", "req.csr", "cert.pem", "ext.cnf"))
        ext.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-sha256", "-days", str(CERT_DAYS), "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-CAserial", str(Path(tmp) / "ca.srl"), "-extfile", str(ext), "-out", str(crt))
        out.write_text(key.read_text() + crt.read_text())
    out.chmod(0o600)


def ensure_certificates(files: SecurityFiles) -> None:
    """The CA and the brokers' certificate, made once."""
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    if not files.ca.exists() or not files.ca_key.exists():
        make_ca(files.ca_key, files.ca, "fraud-pipeline local CA")
        files.ca_key.chmod(0o600)
        files.broker_keystore.unlink(missing_ok=True)
    if not files.broker_keystore.exists():
        make_certificate(files.ca_key, files.ca, files.broker_keystore, BROKER_PRINCIPAL, ("localhost", "127.0.0.1"))


def ensure_passwords(files: SecurityFiles) -> dict[str, str]:
    """Each role's password: generated when the secured cluster is first formatted, then read back."""
    if files.passwords.exists():
        return dict(json.loads(files.passwords.read_text()))
    passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
    files.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(passwords, out, indent=1)
    return passwords


def scram_format_arguments(passwords: dict[str, str]) -> list[str]:
    """``kafka-storage format`` arguments that create the SCRAM users with the cluster's first metadata."""
    args: list[str] = []
    for role, password in passwords.items():
        args += ["--add-scram", f"{MECHANISM}=[name={role},password={password}]"]
    return args


def client_properties(bootstrap: str, role: str, password: str, ca: Path) -> str:
    """The client config file of one role (librdkafka's names, as a provider hands them out)."""
    return (
        f"# {role} on the local secured cluster; written by devcluster.cluster, never commit it.\n"
        f"bootstrap.servers={bootstrap}\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={MECHANISM}\n"
        f"sasl.username={role}\n"
        f"sasl.password={password}\n"
        f"ssl.ca.location={ca}\n"
    )


def write_role_files(files: SecurityFiles, bootstrap: str, passwords: dict[str, str]) -> None:
    for role, password in passwords.items():
        fd = os.open(files.role_file(role), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(client_properties(bootstrap, role, password, files.ca))


def broker_properties(files: SecurityFiles) -> str:
    """The security part of each node's server.properties: SCRAM over TLS for clients, mutual TLS between nodes."""
    return f"""\
sasl.enabled.mechanisms={MECHANISM}
listener.name.client.sasl.enabled.mechanisms={MECHANISM}
listener.name.client.{MECHANISM.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.internal.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location={files.broker_keystore}
ssl.truststore.type=PEM
ssl.truststore.location={files.ca}
ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN};User:{BROKER_PRINCIPAL}
"""
