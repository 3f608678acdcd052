"""Failure tests on the real 3-broker cluster; figures of each run are printed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import client, cluster, pipeline  # noqa: F401  (fixtures)

FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def figures() -> Iterator[dict[str, Any]]:
    """A dict a test fills with its figures; they are listed in the terminal summary."""
    entry: dict[str, Any] = {}
    yield entry
    if entry:
        FIGURES.append(entry)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("chaos figures")
        for entry in FIGURES:
            terminalreporter.write_line(", ".join(f"{k}={v}" for k, v in entry.items()))
