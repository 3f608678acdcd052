"""The secured local cluster's trust and access: a CA, the brokers' certificate, one SCRAM user per role, least-privilege ACLs.

``python -m devcluster up`` with ``KAFKA_SECURITY=sasl_ssl`` uses this module:

- ``.cluster/security/ca.pem``: a CA generated once (with the ``cryptography``
  package, no ``openssl`` binary); it signs the brokers' certificate, whose
  only name is ``DNS:localhost``, which the clients check, hostname
  included: a broker dialled by any other name or address (127.0.0.1 too) is
  refused.
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

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fraud_pipeline.clients.types import Acl
from fraud_pipeline.config import TopicSettings

from .errors import SecuritySetupError

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
BROKER_NAMES = ("localhost",)
"""The only name in the brokers' certificate: every listener and client file says localhost."""


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
    are ``<group>-<host>-<n>``, its internal topics ``<group>-...``: allowed by prefix.
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
            topic(DETECTOR, "READ", topics.lists),
            topic(DETECTOR, "READ", topics.list_definitions),
            *(topic(DETECTOR, "WRITE", name) for name in (topics.fraud, topics.legit, topics.dead_letter, topics.rules_rejected)),
            group(DETECTOR, groups.detector),
            # Its own internal topics, named after its group: the state's changelogs and the topics between its
            # stages (fraud_pipeline.state, fraud_pipeline.topology), which it creates, and whose records it
            # deletes once read (DELETE: delete-records); the groups of its stages; the retention of its input,
            # checked against the rules' windows.
            *(Acl(f"User:{DETECTOR}", op, "TOPIC", f"{groups.detector}-", prefixed=True)
              for op in ("CREATE", "READ", "WRITE", "DELETE", "DESCRIBE_CONFIGS")),
            Acl(f"User:{DETECTOR}", "READ", "GROUP", f"{groups.detector}-", prefixed=True),
            topic(DETECTOR, "DESCRIBE_CONFIGS", topics.payments),
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
        # `fraud_rules.py list` and `mode` read the rules they change; `lists` the lists. The rules admin alone
        # defines lists. Proposals: their topic, the audit trail of each step, and the payments and labels their
        # evidence replays.
        RULES_ADMIN: [*(topic(RULES_ADMIN, op, name)
                        for name in (topics.rules, topics.lists, topics.list_definitions, topics.proposals)
                        for op in ("WRITE", "READ")),
                      topic(RULES_ADMIN, "WRITE", topics.audit),
                      *(topic(RULES_ADMIN, "READ", name) for name in (topics.payments, topics.labels)),
                      idempotent(RULES_ADMIN)],
        # fraud_console.py reads; it sees the pipeline's groups and their offsets, and the brokers (DescribeCluster);
        # it writes only what analysts do: labels, list entries (never a list's definition), claims, the audit trail.
        CONSOLE: [
            *(topic(CONSOLE, "READ", name) for name in (topics.payments, topics.fraud, topics.legit, topics.dead_letter,
                                                        topics.rules, topics.lists, topics.list_definitions,
                                                        topics.labels, topics.claims)),
            *(topic(CONSOLE, "WRITE", name) for name in (topics.labels, topics.lists, topics.audit, topics.claims)),
            # each change with its audit record in one transaction, under ids fraud-console-<host>-<n>
            Acl(f"User:{CONSOLE}", "WRITE", "TRANSACTIONAL_ID", "fraud-console", prefixed=True),
            Acl(f"User:{CONSOLE}", "DESCRIBE", "TRANSACTIONAL_ID", "fraud-console", prefixed=True),
            idempotent(CONSOLE),
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


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8, which Kafka's PEM keystore reads."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """A file only its owner reads, never readable by others even for a moment."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))


def make_ca(key: Path, cert: Path, name: str) -> None:
    """A self-signed CA certificate (``cert``, PEM) and its private key (``key``, PEM, owner-only)."""
    ca_key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = ca_key.public_key()
    certificate = (
        _validity(x509.CertificateBuilder())
        .subject_name(subject).issuer_name(subject).public_key(public).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key, _key_pem(ca_key))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certificate(ca_key: Path, ca_cert: Path, out: Path, common_name: str, names: tuple[str, ...]) -> None:
    """``out``: a private key and a certificate signed by the CA, for ``names`` (DNS names or IPs), in one PEM file.

    The certificate serves and authenticates (serverAuth and clientAuth): the
    brokers present it to clients and to each other (mutual TLS, principal
    ``common_name``).
    """
    try:
        issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SecuritySetupError(f"cannot read the CA ({ca_cert}, {ca_key}): {exc}") from None
    if not isinstance(issuer_key, rsa.RSAPrivateKey):
        raise SecuritySetupError(f"the CA key {ca_key} is not an RSA key")
    key = _new_key()
    public = key.public_key()
    certificate = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject).public_key(public).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    _write_private(out, _key_pem(key) + certificate.public_bytes(serialization.Encoding.PEM))


def certificate_names(pem: Path) -> list[str]:
    """The subject alternative names of the (first) certificate in a PEM file: ``DNS:x`` or ``IP:x``."""
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [f"DNS:{n.value}" if isinstance(n, x509.DNSName) else f"IP:{n.value}" for n in alt
            if isinstance(n, x509.DNSName | x509.IPAddress)]


def _broker_certificate_current(files: SecurityFiles) -> bool:
    """The brokers' certificate exists, names exactly BROKER_NAMES and is signed by this CA (an older one named 127.0.0.1 too)."""
    try:
        certificate = x509.load_pem_x509_certificate(files.broker_keystore.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
        certificate.verify_directly_issued_by(ca)
        return certificate_names(files.broker_keystore) == [f"DNS:{n}" for n in BROKER_NAMES]
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False


def ensure_certificates(files: SecurityFiles) -> None:
    """The CA and the brokers' certificate, made once (the certificate again when it does not match the CA or the names)."""
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    if not files.ca.exists() or not files.ca_key.exists():
        make_ca(files.ca_key, files.ca, "fraud-pipeline local CA")
        files.broker_keystore.unlink(missing_ok=True)
    if not _broker_certificate_current(files):
        make_certificate(files.ca_key, files.ca, files.broker_keystore, BROKER_PRINCIPAL, BROKER_NAMES)


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
