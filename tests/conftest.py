"""Shared fixtures: both simulators served over real HTTP on loopback.

The servers are session-scoped (starting uvicorn costs ~100 ms); every test gets a reset simulator.
Webhook retry delays run at 1/100 of real time so Pipedrive's 3/30/150 s schedule takes 1.8 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from simulators.common import SimServer

PIPEDRIVE_TOKEN = "sim-pipedrive-token"
MAILEON_KEY = "sim-maileon-key"
WEBHOOK_TIME_SCALE = 0.01


@dataclass
class SimHandle:
    """A running simulator: the in-process object (for white-box checks) and its HTTP address."""

    sim: Any
    base_url: str
    secret: str


@pytest.fixture(scope="session")
def _pipedrive_server() -> Iterator[tuple[Any, SimServer]]:
    from simulators.pipedrive import PipedriveSim

    sim = PipedriveSim(token=PIPEDRIVE_TOKEN, webhook_time_scale=WEBHOOK_TIME_SCALE)
    server = SimServer(sim.app).start()
    yield sim, server
    server.stop()
    sim.close()


@pytest.fixture(scope="session")
def _maileon_server() -> Iterator[tuple[Any, SimServer]]:
    from simulators.maileon import MaileonSim

    sim = MaileonSim(api_key=MAILEON_KEY, webhook_time_scale=WEBHOOK_TIME_SCALE)
    server = SimServer(sim.app).start()
    yield sim, server
    server.stop()
    sim.close()


@pytest.fixture
def pipedrive_sim(_pipedrive_server: tuple[Any, SimServer]) -> SimHandle:
    sim, server = _pipedrive_server
    sim.reset()
    return SimHandle(sim=sim, base_url=server.base_url, secret=PIPEDRIVE_TOKEN)


@pytest.fixture
def maileon_sim(_maileon_server: tuple[Any, SimServer]) -> SimHandle:
    sim, server = _maileon_server
    sim.reset()
    return SimHandle(sim=sim, base_url=server.base_url + "/1.0", secret=MAILEON_KEY)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run tests that need the Prefect test server last.

    The server harness starts background threads and event loops in this process; a process forked
    after that (the store's fork-safety tests do so) inherits them half-alive and dies.
    """
    items.sort(key=lambda item: "prefect_api" in getattr(item, "fixturenames", ()))
