"""What every test folder shares: the figures a failure test reports, and which tests may run side by side.

``make test`` runs two pytest workers (pytest-xdist, ``--dist loadgroup``):
the tests on the secured cluster in one, everything else in the other, so the
open cluster only ever serves one test at a time (the broker-kill test kills
its brokers) while the secured one serves the other worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

SECURED = "secured-cluster"
OPEN = "open-cluster"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = SECURED if item.path.parent.name == "security" else OPEN
        item.add_marker(pytest.mark.xdist_group(group))


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
