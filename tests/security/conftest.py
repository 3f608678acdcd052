"""Fixtures for tests on the secured local cluster (KAFKA_SECURITY=sasl_ssl), started beside the open one.

The session starts the secured cluster when it is not up (and stops it at the
end only then). Each test gets its own topics and groups, created by the
``admin`` user, with each role's ACLs granted on them exactly as
``python -m devcluster up`` grants them on the pipeline's own names.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devcluster import security as cluster_security
from devcluster.cluster import SASL_SSL, ClusterLayout
from devcluster.security import Groups, SecurityFiles
from fraud_pipeline.clients import CLIENTS, KAFKA_PYTHON, backend
from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.security import Security
from fraud_pipeline.topics import ensure_topics, pipeline_topics
from tests.integration.conftest import ROOT, TEST_CLIENT_SECURITY, Pipeline, client, fresh_topics  # noqa: F401  (fixture)

SCRIPT_ROLES = {
    "payment_producer": cluster_security.PRODUCER, "fraud_detector": cluster_security.DETECTOR,
    "fraud_processor": cluster_security.FRAUD_PROCESSOR, "legit_processor": cluster_security.LEGIT_PROCESSOR,
    "fraud_console": cluster_security.CONSOLE, "fraud_rules": cluster_security.RULES_ADMIN,
}


@dataclass(frozen=True)
class SecuredCluster:
    """The running secured cluster: where it listens, its client files, and the admin's settings."""

    bootstrap: str
    files: SecurityFiles
    admin: Security

    def role_file(self, role: str) -> str:
        return str(self.files.role_file(role))


def _cluster_tool(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devcluster", command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def secured_cluster() -> Iterator[SecuredCluster]:
    env = dict(os.environ, KAFKA_SECURITY=SASL_SSL)
    started = _cluster_tool("ping", env).returncode != 0
    # `up` also on a running cluster: it writes the role files and grants the ACLs, both idempotent.
    up = _cluster_tool("up", env)
    assert up.returncode == 0, f"the secured cluster did not start:\n{up.stdout}\n{up.stderr}"
    layout = ClusterLayout.from_env(env)
    assert layout.security is not None
    admin = layout.admin_security()
    assert admin is not None
    TEST_CLIENT_SECURITY[layout.bootstrap_servers] = admin
    try:
        yield SecuredCluster(layout.bootstrap_servers, layout.security, admin)
    finally:
        del TEST_CLIENT_SECURITY[layout.bootstrap_servers]
        if started:
            _cluster_tool("down", env)


@pytest.fixture
def secured_pipeline(secured_cluster: SecuredCluster, client: str) -> Iterator[Pipeline]:  # noqa: F811
    """Fresh topics and groups on the secured cluster, each script with its own role's client file."""
    with fresh_secured_pipeline(secured_cluster, client) as made:
        yield made


@pytest.fixture
def secured_pipelines(secured_cluster: SecuredCluster) -> Iterator[dict[str, Pipeline]]:
    """One fresh secured pipeline per client library, for tests that hurt both at once."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(fresh_secured_pipeline(secured_cluster, name)) for name in CLIENTS}


@contextlib.contextmanager
def fresh_secured_pipeline(secured_cluster: SecuredCluster, client: str) -> Iterator[Pipeline]:  # noqa: F811
    """Fresh topics, groups and their ACLs on the secured cluster, each script with its own role's client file."""
    suffix, topics = fresh_topics()
    pipeline = Pipeline(
        topics, suffix, secured_cluster.bootstrap, client,
        client_configs={script: secured_cluster.role_file(role) for script, role in SCRIPT_ROLES.items()},
    )
    groups = Groups(detector=pipeline.group("detector"), fraud_processor=pipeline.group("fraud-processor"),
                    legit_processor=pipeline.group("legit-processor"))
    settings = Settings(ConnectionSettings(tuple(secured_cluster.bootstrap.split(",")), security=secured_cluster.admin), topics)
    assert set(ensure_topics(settings, pipeline_topics(topics)).values()) == {"created"}
    admin = backend(KAFKA_PYTHON, settings.connection.bootstrap_servers, secured_cluster.admin).admin("tests")
    try:
        admin.create_acls([acl for acls in cluster_security.role_acls(topics, groups).values() for acl in acls])
        yield pipeline
    finally:
        pipeline.kill_leftovers()
        admin.delete_topics([spec.name for spec in pipeline_topics(topics)])
        admin.close()
