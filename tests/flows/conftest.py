"""Fixtures for flow tests: a Prefect test server for the session, and a runtime wired to both
simulators (served over HTTP) and a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pmsync.settings import Settings
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield


def make_settings(pipedrive: SimHandle, maileon: SimHandle, db: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "PIPEDRIVE_BASE_URL": pipedrive.base_url,
        "PIPEDRIVE_API_TOKEN": pipedrive.secret,
        "MAILEON_BASE_URL": maileon.base_url,
        "MAILEON_API_KEY": maileon.secret,
        "PMSYNC_DATABASE_URL": f"sqlite:///{db}",
        "PMSYNC_HTTP_BACKOFF_BASE_SECONDS": 0.01,
        "PMSYNC_HTTP_BACKOFF_MAX_SECONDS": 3.0,
        "PMSYNC_HTTP_MAX_RETRIES": 8,
        "MAILEON_DOI_MAILING_KEY": "doi-mailing-1",
        **extra,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def runtime(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None) -> Iterator[Runtime]:
    sim_control(pipedrive_sim, "/_sim/config", {"campaigns_enabled": True, "subscriber_cap": None,
                                                 "once_only_rule": False})
    rt = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db"))
    with use_runtime(rt):
        yield rt
    rt.close()


def sim_root(handle: SimHandle) -> str:
    return handle.base_url.removesuffix("/1.0")


def sim_control(handle: SimHandle, path: str, body: Any = None, method: str = "POST") -> Any:
    response = httpx.request(method, sim_root(handle) + path, json=body, timeout=10)
    response.raise_for_status()
    return response.json() if response.content else None
