"""What every test folder shares: the figures a failure test reports, and which tests may run side by side.

``make test`` runs two pytest workers (pytest-xdist) that take whole clusters
(``ByCluster``): every test on the open cluster runs in one worker, one at a
time (the broker-kill test kills its brokers), while the other runs the unit
tests, then every test on the secured cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

NO_CLUSTER, OPEN, SECURED = "no-cluster", "open-cluster", "secured-cluster"


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
