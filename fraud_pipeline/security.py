"""How a script reaches a secured cluster: TLS and SASL settings from a client properties file, the environment and flags.

The file is the one a provider hands out (Confluent Cloud, Amazon MSK, Aiven,
Redpanda Cloud), in librdkafka's names::

    bootstrap.servers=pkc-xxxxx.eu-west-1.aws.confluent.cloud:9092
    security.protocol=SASL_SSL
    sasl.mechanisms=PLAIN
    sasl.username=<api key>
    sasl.password=<api secret>

Java's form of the credentials is read too
(``sasl.jaas.config=... required username="..." password="...";``). A key this
module does not know is an error naming it: a setting silently dropped would
leave a script speaking to a cluster in a way its owner did not choose.

Precedence: a flag beats the environment, which beats the file. A password
is taken from the file or the environment only, never from a flag (it would
show in ``ps``), and prints as ``***``. The record itself, :class:`Security`
(with :class:`Secret`), belongs to the client seam (fraud_pipeline.clients.security),
whose backends map it to their own settings; it is re-exported here.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .clients.security import Secret, Security
from .errors import SecurityConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class _Key:
    field: str
    """Security field it sets."""
    env: str
    """Environment variable of the same setting."""
    flag: str | None = None
    """Command-line flag; None for secrets."""


_KEYS: dict[str, _Key] = {
    "security.protocol": _Key("protocol", "KAFKA_SECURITY_PROTOCOL", "--security-protocol"),
    "sasl.mechanism": _Key("sasl_mechanism", "KAFKA_SASL_MECHANISM", "--sasl-mechanism"),
    "sasl.username": _Key("sasl_username", "KAFKA_SASL_USERNAME", "--sasl-username"),
    "sasl.password": _Key("sasl_password", "KAFKA_SASL_PASSWORD"),
    "ssl.ca.location": _Key("ssl_ca_location", "KAFKA_SSL_CA_LOCATION", "--ssl-ca-location"),
    "ssl.certificate.location": _Key("ssl_certificate_location", "KAFKA_SSL_CERTIFICATE_LOCATION", "--ssl-certificate-location"),
    "ssl.key.location": _Key("ssl_key_location", "KAFKA_SSL_KEY_LOCATION", "--ssl-key-location"),
    "ssl.key.password": _Key("ssl_key_password", "KAFKA_SSL_KEY_PASSWORD"),
    "ssl.endpoint.identification.algorithm": _Key(
        "ssl_check_hostname", "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "--ssl-endpoint-identification-algorithm",
    ),
}
"""Every setting, by its librdkafka name: one table for the file, the environment and the flags."""
_ALIASES = {"sasl.mechanisms": "sasl.mechanism"}
"""librdkafka's plural spelling, as Confluent Cloud's Python snippet writes it."""
BOOTSTRAP_KEY = "bootstrap.servers"
JAAS_KEY = "sasl.jaas.config"
SUPPORTED_KEYS = (BOOTSTRAP_KEY, *_KEYS, JAAS_KEY, *_ALIASES)
_PATH_FIELDS = {"ssl_ca_location", "ssl_certificate_location", "ssl_key_location"}


def read_properties(path: str) -> dict[str, str]:
    """``key=value`` lines of a Java-style properties file (``#``/``!`` comments, ``:`` or ``=``, ``\\`` continuations)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the client config file {path}: {exc.strerror or exc}") from None
    props: dict[str, str] = {}
    logical = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical += line[:-1]
            continue
        line, logical = logical + line, ""
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match is None:
            raise SecurityConfigError(f"{path} line {number}: expected key=value, got {line[:40]!r}")
        props[match.group(1)] = match.group(2).strip()
    return props


def _jaas_credentials(value: str, where: str) -> tuple[str, str]:
    """Username and password of a ``sasl.jaas.config`` value (PlainLoginModule or ScramLoginModule)."""
    found = {k: v for k, v in re.findall(r'\b(username|password)\s*=\s*"((?:[^"\\]|\\.)*)"', value)}
    if "username" not in found or "password" not in found:
        raise SecurityConfigError(f"{where}: sasl.jaas.config has no username=\"...\" and password=\"...\"")
    return found["username"], found["password"]


def _from_file(path: str) -> tuple[str | None, dict[str, str]]:
    """Bootstrap servers and the security settings (by field name) a client properties file gives."""
    props = read_properties(path)
    servers: str | None = None
    values: dict[str, str] = {}
    for key, value in props.items():
        name = _ALIASES.get(key, key)
        if name == BOOTSTRAP_KEY:
            servers = value
        elif name == JAAS_KEY:
            values["sasl_username"], values["sasl_password"] = _jaas_credentials(value, path)
        elif name in _KEYS:
            values[_KEYS[name].field] = value
        else:
            raise SecurityConfigError(
                f"{path}: unsupported key {key!r}; a client config file sets the connection only: {', '.join(SUPPORTED_KEYS)}"
            )
    return servers, values


def from_file(path: str) -> tuple[str | None, Security]:
    """Bootstrap servers and Security of a client config file alone (a tool's own connection)."""
    servers, values = _from_file(path)
    return servers, _build(values, {name: path for name in values})


def add_arguments(group: argparse._ArgumentGroup, env: Mapping[str, str]) -> None:
    """The security flags of every script; their defaults stay None so that precedence is settled in :func:`resolve`."""
    group.add_argument(
        "--client-config", metavar="FILE", default=None,
        help="client properties file as your Kafka provider gives it (bootstrap.servers, security.protocol, "
        "sasl.mechanism, sasl.username, sasl.password or sasl.jaas.config, ssl.ca.location, ...); the environment "
        f"and flags override it [env KAFKA_CLIENT_CONFIG] (default: {env.get('KAFKA_CLIENT_CONFIG') or 'none'})",
    )
    group.add_argument("--security-protocol", choices=PROTOCOLS, default=None,
                       help="[env KAFKA_SECURITY_PROTOCOL] (default: the file's, else PLAINTEXT)")
    group.add_argument("--sasl-mechanism", choices=MECHANISMS, default=None, help="[env KAFKA_SASL_MECHANISM]")
    group.add_argument("--sasl-username", default=None, metavar="USER",
                       help="the password comes from the file or KAFKA_SASL_PASSWORD, never a flag [env KAFKA_SASL_USERNAME]")
    group.add_argument("--ssl-ca-location", default=None, metavar="PEM",
                       help="CA certificate(s) of the brokers [env KAFKA_SSL_CA_LOCATION]")
    group.add_argument("--ssl-certificate-location", default=None, metavar="PEM",
                       help="client certificate, for mutual TLS [env KAFKA_SSL_CERTIFICATE_LOCATION]")
    group.add_argument("--ssl-key-location", default=None, metavar="PEM",
                       help="client private key; its password from the file or KAFKA_SSL_KEY_PASSWORD [env KAFKA_SSL_KEY_LOCATION]")
    group.add_argument("--ssl-endpoint-identification-algorithm", choices=("https", "none"), default=None,
                       help="https checks that the broker's certificate names the host dialled "
                       "[env KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM] (default: https)")


def resolve(args: argparse.Namespace | None, env: Mapping[str, str] | None = None) -> tuple[str | None, Security]:
    """Bootstrap servers the file gives (None if it gives none) and the Security in force: flags over environment over file.

    ``args`` holds the flags of :func:`add_arguments`; None: no flags, the environment and the file only.
    Raises SecurityConfigError for a file that cannot be read, an unknown key, a
    value out of range, a missing credential or a certificate file that is not there.
    """
    env = os.environ if env is None else env
    flags: dict[str, str | None] | None = None if args is None else vars(args)
    path = (flags.get("client_config") if flags is not None else None) or env.get("KAFKA_CLIENT_CONFIG") or None
    servers, values = _from_file(path) if path else (None, {})
    origin = {name: f"{path} ({key})" for key, spec in _KEYS.items() for name in [spec.field] if name in values}
    for key, spec in _KEYS.items():
        if env.get(spec.env):
            values[spec.field], origin[spec.field] = env[spec.env], spec.env
        flag_value = flags.get(spec.flag.lstrip("-").replace("-", "_")) if spec.flag and flags is not None else None
        if flag_value is not None:
            values[spec.field], origin[spec.field] = flag_value, spec.flag or key
    return servers, _build(values, origin)


def _build(values: dict[str, str], origin: dict[str, str]) -> Security:
    protocol = values.get("protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise SecurityConfigError(f"{origin['protocol']}: security.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    mechanism = values.get("sasl_mechanism")
    if mechanism is not None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SecurityConfigError(
                f"{origin['sasl_mechanism']}: sasl.mechanism {mechanism!r} is not supported; one of {', '.join(MECHANISMS)}"
            )
    check = values.get("ssl_check_hostname", "https").strip().lower()
    if check not in ("https", "none", ""):
        raise SecurityConfigError(
            f"{origin['ssl_check_hostname']}: ssl.endpoint.identification.algorithm {check!r} is not https or none"
        )
    for name in _PATH_FIELDS & values.keys():
        if not Path(values[name]).is_file():
            raise SecurityConfigError(f"{origin[name]}: no such file: {values[name]}")
    security = Security(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=values.get("sasl_username"),
        sasl_password=Secret(values["sasl_password"]) if "sasl_password" in values else None,
        ssl_ca_location=values.get("ssl_ca_location"),
        ssl_certificate_location=values.get("ssl_certificate_location"),
        ssl_key_location=values.get("ssl_key_location"),
        ssl_key_password=Secret(values["ssl_key_password"]) if "ssl_key_password" in values else None,
        ssl_check_hostname=check == "https",
    )
    if security.uses_sasl:
        missing = [key for key in ("sasl.mechanism", "sasl.username", "sasl.password")
                   if getattr(security, _KEYS[key].field) is None]
        if missing:
            raise SecurityConfigError(f"security.protocol {protocol} needs {', '.join(missing)} (file, environment or flag)")
    else:
        given = [key for key in ("sasl.mechanism", "sasl.username", "sasl.password") if getattr(security, _KEYS[key].field)]
        if given:
            raise SecurityConfigError(
                f"{', '.join(given)} given, but security.protocol is {protocol}: set SASL_SSL (or SASL_PLAINTEXT) to use them"
            )
    if not security.uses_tls:
        given = [key for key, spec in _KEYS.items() if key.startswith("ssl.") and spec.field in values
                 and spec.field != "ssl_check_hostname"]
        if given:
            raise SecurityConfigError(f"{', '.join(given)} given, but security.protocol is {protocol}: set SSL or SASL_SSL to use them")
    if (security.ssl_certificate_location is None) != (security.ssl_key_location is None):
        raise SecurityConfigError("ssl.certificate.location and ssl.key.location go together: give both or neither")
    return security

