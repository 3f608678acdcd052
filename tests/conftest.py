"""What every test folder shares: the figures a failure test reports, and which tests may run side by side.

``make test`` runs three pytest workers (pytest-xdist) that take whole clusters
(``ByCluster``): the failure tests run in one worker on a cluster of their own
(tests/chaos/conftest.py: the broker-kill test kills its brokers), the other
tests on the open cluster in a second, one at a time, while the third runs
every test on the secured cluster, then the proposals test (on the open
cluster too), then the unit tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

NO_CLUSTER, OPEN, CHAOS, SECURED = "no-cluster", "open-cluster", "failure-tests-cluster", "secured-cluster"
UNIT_SECURED_MORE = "secured-unit-proposals"
REQUIRE_CLUSTERS = "REQUIRE_CLUSTER_TESTS"
"""Set (by .ci/run): the run fails unless tests on both clusters passed and none of them was skipped."""


def cluster_of(nodeid: str) -> str:
    """Which cluster a test uses, by its folder: none (unit tests), the open one, the failure tests' or the secured one."""
    if nodeid.startswith("tests/unit/"):
        return NO_CLUSTER
    if nodeid.startswith("tests/chaos/"):
        return CHAOS
    return SECURED if nodeid.startswith("tests/security/") else OPEN


class ByCluster(LoadScopeScheduling):
    """xdist's scheduling by scope, the scope being the cluster: each worker runs all the tests of one cluster in turn.

    The secured cluster's tests, the proposals test and the unit tests share a scope (one worker, one after the
    other): with three workers the failure tests, the open cluster's and those take about as long each.
    (xdist's own ``--dist loadgroup`` marks do not group tests under pytest 9, which names nodes differently.)
    """

    def _split_scope(self, nodeid: str) -> str:
        return share_of(nodeid)


def share_of(nodeid: str) -> str:
    """The share of the work (one worker's) a test belongs to: its cluster's, with the unit tests and the proposals
    test (on the open cluster, and not timed) going with the secured cluster's: the open cluster's other tests take
    the longest. (The console's browser tests, moved there too for a run, failed twice on timings the open cluster's
    tests beside them upset: they stay with those.)"""
    if nodeid.startswith("tests/integration/test_proposals.py"):
        return UNIT_SECURED_MORE
    cluster = cluster_of(nodeid)
    return UNIT_SECURED_MORE if cluster in (NO_CLUSTER, SECURED) else cluster


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
    shares = seconds_per_share(terminalreporter.stats)
    if len(shares) > 1:
        terminalreporter.section("seconds per worker's share (setup, call and teardown)")
        terminalreporter.write_line(", ".join(f"{share} {seconds:,.0f}" for share, seconds in sorted(shares.items())))


def seconds_per_share(stats: dict[str, list[Any]]) -> dict[str, float]:
    """The seconds the tests took, summed by the share of the work one worker takes (``ByCluster``): the longest
    share is about how long the run takes."""
    shares: dict[str, float] = {}
    for reports in stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                share = share_of(report.nodeid)
                shares[share] = shares.get(share, 0.0) + report.duration
    return shares


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With REQUIRE_CLUSTER_TESTS set: a run whose cluster tests were skipped, or never ran, fails."""
    if not os.environ.get(REQUIRE_CLUSTERS) or hasattr(session.config, "workerinput"):  # the controller judges
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    skipped = sorted({r.nodeid for r in stats.get("skipped", []) if cluster_of(r.nodeid) != NO_CLUSTER})
    ran = {cluster_of(r.nodeid) for r in stats.get("passed", []) if r.when == "call"}
    missing = sorted({OPEN, CHAOS, SECURED} - ran)
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
