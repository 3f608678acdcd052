"""The seam's error kinds: every backend classifies its library's failures into these, once, at its edge.

One root (ClientError) and three kinds by what to do next, as librdkafka's
``retriable()`` / ``txn_requires_abort()`` and aiokafka's ``errors.py`` say:

    RetriableError   roll back and read again
    FencedError      replace the producer (same transactional id)
    FatalError       stop: authorization, authentication, configuration

plus the one-line messages a refused connection is reported with.
"""

from __future__ import annotations

import socket


class ClientError(Exception):
    """A Kafka failure, classified once at the backend's edge (as librdkafka and quix-streams classify theirs)."""


class RetriableError(ClientError):
    """Transient: a broker lost, a leader moving, a rebalance, a timeout. The batch is rolled back and read again."""


class FencedError(ClientError):
    """The producer cannot go on (fenced by a newer instance, or failed for good): a new producer with the same id mends it."""


class FatalError(ClientError):
    """No retry mends it: authorization, authentication, configuration. The script stops with exit 1."""


class UnknownTopicError(FatalError):
    """The topic does not exist."""


class NotAuthorizedError(FatalError):
    """The cluster's ACLs refuse this user an operation on a resource (a topic, a group, a transactional id)."""

    def __init__(self, text: str, resource: str = "") -> None:
        super().__init__(text)
        self.resource = resource
        """The topic (or group) refused, when the client says which."""


class RefusedError(FatalError):
    """The cluster refused the connection itself: authentication failed, or TLS did not agree. Never retried."""


def authentication_failed(user: str | None, servers: str, detail: str) -> RefusedError:
    return RefusedError(f"authentication failed for user {user} at {servers}: {detail}")


def tls_failed(servers: str, detail: str) -> RefusedError:
    hint = ""
    if any(sign in detail.lower() for sign in ("wrong version number", "unexpected_eof", "unexpected eof", "plaintext", "closed by peer")):
        hint = " (is it a PLAINTEXT listener? check security.protocol and the port)"
    return RefusedError(f"TLS handshake failed at {servers}: {detail}{hint}")


def cannot_reach(servers: str, within_s: float, why: object, protocol: str) -> FatalError:
    """No broker answered: says whether anything listens there at all, which tells a cluster down from a protocol mismatch."""
    listening = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                listening.append(server)
        except (OSError, ValueError):
            pass
    if listening:
        hint = (f"{', '.join(listening)} accept(s) connections but do not answer as {protocol} expects: "
                "does security.protocol match the listener?")
    else:
        hint = "nothing listens there: is the cluster up? `make cluster-up`"
    return FatalError(f"cannot reach Kafka at {servers} within {within_s:.0f}s: {why} ({hint})")
