"""What every test folder shares: the figures a failure test reports, and which tests may run side by side.

``make test`` runs two pytest workers (pytest-xdist) that take whole clusters
(``ByCluster``): every test on the open cluster runs in one worker, one at a
time (the broker-kill test kills its brokers), while the other runs the unit
tests, then every test on the secured cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

NO_CLUSTER, OPEN, SECURED = "no-cluster", "open-cluster", "secured-cluster"
REQUIRE_CLUSTERS = "REQUIRE_CLUSTER_TESTS"
"""Set (by .ci/run): the run fails unless tests on both clusters passed and none of them was skipped."""


def cluster_of(nodeid: str) -> str:
    """Which cluster a test uses, by its folder: none (unit tests), the open one, or the secured one."""
    if nodeid.startswith("tests/unit/"):
        return NO_CLUSTER
    return SECURED if nodeid.startswith("tests/security/") else OPEN


class ByCluster(LoadScopeScheduling):
    """xdist's scheduling by scope, the scope being the cluster: each worker runs all the tests of one cluster in turn.

    (xdist's own ``--dist loadgroup`` marks do not group tests under pytest 9, which names nodes differently.)
    """

    def _split_scope(self, nodeid: str) -> str:
        return cluster_of(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ByCluster:
    return ByCluster(config, log)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Where a test puts the figures of each run (one dict per client): they are listed in the terminal summary."""
    entries: list[dict[str, Any]] = []
    yield entries
    request.node.user_properties.extend(("figures", entry) for entry in entries if entry)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures of every test that reported some, from this process or from a worker's reports."""
    seen: list[dict[str, Any]] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, entry in getattr(report, "user_properties", ()):
                if name == "figures" and entry not in seen:
                    seen.append(entry)
    if seen:
        terminalreporter.section("failure test figures")
        for entry in seen:
            terminalreporter.write_line(", ".join(f"{k}={v}" for k, v in entry.items()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With REQUIRE_CLUSTER_TESTS set: a run whose cluster tests were skipped, or never ran, fails."""
    if not os.environ.get(REQUIRE_CLUSTERS) or hasattr(session.config, "workerinput"):  # the controller judges
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    skipped = sorted({r.nodeid for r in stats.get("skipped", []) if cluster_of(r.nodeid) != NO_CLUSTER})
    ran = {cluster_of(r.nodeid) for r in stats.get("passed", []) if r.when == "call"}
    missing = sorted({OPEN, SECURED} - ran)
    if not (skipped or missing):
        return
    if reporter is not None:
        reporter.write_line("")
        reporter.section(f"{REQUIRE_CLUSTERS}: cluster tests did not all run", red=True)
        for nodeid in skipped:
            reporter.write_line(f"skipped: {nodeid}")
        for cluster in missing:
            reporter.write_line(f"no test passed on the {cluster}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
