"""Failure tests on the real 3-broker cluster; figures of each run are printed at the end (tests/conftest.py)."""

from __future__ import annotations

from tests.integration.conftest import client, cluster, pipeline, pipelines  # noqa: F401  (fixtures)
