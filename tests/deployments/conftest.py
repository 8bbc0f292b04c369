"""Ordering: tests that run a Prefect server in this process's neighbourhood go after all others.

A local Prefect server, a runner thread and a fork server leave Prefect's background threads in this
process; a process forked afterwards (the store's fork-safety tests do so) inherits them half-alive.
So: everything else first, then these end-to-end tests (their own local server), then the tests on
the session's Prefect test harness (whose settings would otherwise shadow the local server's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.store import Store


def _tier(item: pytest.Item) -> int:
    if "prefect_api" in getattr(item, "fixturenames", ()):
        return 2
    if item.get_closest_marker("prefect") is not None and "tests/deployments/" in item.nodeid:
        return 1
    return 0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_tier)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh SQLite store (the receiver's inbox) for one test."""
    s = Store.from_url(f"sqlite:///{tmp_path / 'pmsync.db'}")
    yield s
    s.close()
