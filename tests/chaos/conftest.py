"""Failure tests on a 3-broker cluster of their own; figures of each run are printed at the end (tests/conftest.py).

The broker-kill test kills brokers, and every failure test loads the machine: on a cluster of their own
(``KAFKA_PORT_BASE``: localhost:9291-9293 under ``.cluster/plaintext-9290/``) they run beside the other tests
without hurting them. The session starts it when it is not up, and stops it at the end only then.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient

from devcluster.cluster import ClusterLayout
from tests.integration.conftest import ROOT, client, pipeline, pipelines  # noqa: F401  (fixtures)

PORT_BASE = os.environ.get("CHAOS_KAFKA_PORT_BASE", "9290")
CHAOS_ENV = dict(os.environ, KAFKA_SECURITY="plaintext", KAFKA_PORT_BASE=PORT_BASE)
"""The environment of ``python -m devcluster`` for the failure tests' cluster."""


def cluster_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m devcluster ARGS`` on the failure tests' cluster."""
    done = subprocess.run([sys.executable, "-m", "devcluster", *args], env=CHAOS_ENV,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert not check or done.returncode == 0, f"devcluster {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """The bootstrap servers of the failure tests' own running cluster of 3 brokers."""
    started = cluster_command("ping", check=False).returncode != 0
    if started:
        cluster_command("up")
    bootstrap = ClusterLayout.from_env(CHAOS_ENV).bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=10000)
    try:
        brokers = admin.describe_cluster()["brokers"]
    finally:
        admin.close()
    assert len(brokers) == 3, f"expected 3 brokers, found {brokers}"
    try:
        yield bootstrap
    finally:
        if started:
            cluster_command("down")
