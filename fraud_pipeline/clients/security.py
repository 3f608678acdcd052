"""The TLS and SASL settings every backend maps to its client library's own: the Security record, and Secret.

Reading them from a client config file, the environment and flags is the
app's (fraud_pipeline.security); the seam only receives the record.
"""

from __future__ import annotations

from dataclasses import dataclass


class Secret(str):
    """A string that prints as ``***``: passwords in reprs, logs and tracebacks."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def reveal(self) -> str:
        """The secret itself, for the client library only."""
        return str.__str__(self)


@dataclass(frozen=True)
class Security:
    """TLS and SASL settings of every connection a script opens (librdkafka's names in the docs)."""

    protocol: str = "PLAINTEXT"
    """``security.protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str | None = None
    """``sasl.mechanism``: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL protocols only)."""
    sasl_username: str | None = None
    """``sasl.username``."""
    sasl_password: Secret | None = None
    """``sasl.password``; never printed."""
    ssl_ca_location: str | None = None
    """``ssl.ca.location``: PEM file of the CA(s) that signed the brokers' certificates; None: the system's."""
    ssl_certificate_location: str | None = None
    """``ssl.certificate.location``: this client's PEM certificate, for brokers that require one (mutual TLS)."""
    ssl_key_location: str | None = None
    """``ssl.key.location``: this client's PEM private key."""
    ssl_key_password: Secret | None = None
    """``ssl.key.password``: the key's password, if it is encrypted; never printed."""
    ssl_check_hostname: bool = True
    """``ssl.endpoint.identification.algorithm`` https (True) or none: the broker's certificate must name the host dialled."""

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for the start-up log, without secrets: ``SASL_SSL SCRAM-SHA-512 user fraud-detector``."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts += [self.sasl_mechanism or "?", f"user {self.sasl_username}"]
        return " ".join(parts)
