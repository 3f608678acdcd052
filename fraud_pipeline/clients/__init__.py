"""The Kafka client seam: the pipeline's own types and interfaces, and one backend module per client library.

    kafka_python   kafka-python, pure Python: the tutorial's client and the default
    confluent      confluent-kafka, on librdkafka (C): several times faster on the same brokers

Nothing outside this package imports a client library.
"""

from __future__ import annotations

from typing import Final

from .base import Admin, Backend, Batch, Consumer, Producer
from .errors import ClientError, FatalError, FencedError, NotAuthorizedError, RefusedError, RetriableError, UnknownTopicError
from .security import Secret, Security
from .types import Acl, Broker, ClusterInfo, GroupInfo, GroupMember, Headers, PartitionInfo, Record, TopicPartition, TopicSpec

KAFKA_PYTHON: Final = "kafka-python"
CONFLUENT: Final = "confluent"
CLIENTS = (KAFKA_PYTHON, CONFLUENT)
"""The client libraries behind the seam, by the name ``--client`` and ``KAFKA_CLIENT`` take."""


def backend(client: str, bootstrap_servers: tuple[str, ...], security: Security | None = None) -> Backend:
    """The backend of ``client`` (one of CLIENTS) for a cluster; the library is imported only when chosen.

    ``security`` (TLS, SASL) is mapped to the library's own settings by its backend; None is PLAINTEXT.
    """
    security = Security() if security is None else security
    if client == KAFKA_PYTHON:
        from . import kafka_python

        return kafka_python.Backend(bootstrap_servers, security)
    if client == CONFLUENT:
        from . import confluent

        return confluent.Backend(bootstrap_servers, security)
    raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(CLIENTS)}")


__all__ = [
    "CLIENTS",
    "CONFLUENT",
    "KAFKA_PYTHON",
    "Acl",
    "Admin",
    "Backend",
    "Batch",
    "Broker",
    "ClientError",
    "ClusterInfo",
    "Consumer",
    "FatalError",
    "FencedError",
    "GroupInfo",
    "GroupMember",
    "Headers",
    "NotAuthorizedError",
    "PartitionInfo",
    "Producer",
    "Record",
    "RefusedError",
    "RetriableError",
    "Secret",
    "Security",
    "TopicPartition",
    "TopicSpec",
    "UnknownTopicError",
    "backend",
]
