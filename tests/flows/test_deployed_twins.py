"""What deployments run: the async twins of the flows (flows/deployed.py), through the Prefect engine
with production heartbeats on – same results and artifacts as the sync flows the other tests call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import flows.deployed as deployed
from pmsync.rules.newsletter import Newsletter
from tasks.account import load_account
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings

pytestmark = pytest.mark.prefect


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path, prefect_api: None) -> Iterator[Runtime]:
    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    runtime = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                                                  PMSYNC_REPAIR_THRESHOLD=1.0))
    with use_runtime(runtime), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        yield runtime
    runtime.close()


def run(twin: Any, **parameters: Any) -> Any:
    return asyncio.run(twin(**parameters))


async def artifact_keys() -> set[str]:
    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key}


def test_the_deployed_consent_sync_reconcile_and_drain_do_the_work_and_publish_their_artifacts(
    rt: Runtime, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    account = load_account(rt)
    subscribe = account.newsletter.option_id(Newsletter.SUBSCRIBE)
    ann = pipedrive_sim.sim.ui_create_person(name="Ann Lee", owner_id=1, custom_fields={account.newsletter.key: subscribe},
                                             emails=[{"value": "ann@example.org", "primary": True}])

    reports = run(deployed.sync)
    assert sum(r.summary.actions.get("create_maileon_contact_with_doi", 0) for r in reports) == 1
    assert maileon_sim.sim.contact("ann@example.org")["doi_pending"]
    assert account.newsletter.value_of(pipedrive_sim.sim.person(ann.id)["custom_fields"][account.newsletter.key]) \
        == Newsletter.PENDING_DOI
    report = run(deployed.reconcile, mode="full")
    assert report.status in ("in_sync", "repaired")
    drained = run(deployed.drain_inbox)
    assert drained is not None

    # Artifacts published from sync code inside the async twins' runs (tasks/artifacts.py).
    keys = asyncio.run(artifact_keys())
    assert {"subscribers-to-maileon-summary", "reconcile-drift-report", "webhook-inbox-summary"} <= keys, keys


@task
def _noop_task(i: int) -> int:
    return i


@flow
def _tasks_in_a_row(n: int, submitted: bool = False) -> int:
    if submitted:  # through the task runner's threads, as the reconcile's readers run
        return sum(f.result() for f in [_noop_task.submit(i) for i in range(n)])
    return sum(_noop_task(i) for i in range(n))


@pytest.mark.parametrize("submitted", [False, True])
def test_a_deployed_flow_builds_no_prefect_client_per_task_run(
    prefect_api: None, monkeypatch: pytest.MonkeyPatch, submitted: bool
) -> None:
    """Each sync task run in an async flow's context built its own client (an httpx client with a new
    TLS context, ~20 ms of CPU) – a third of the twins' overhead next to plain functions."""
    built: list[int] = []
    original = SyncPrefectClient.__init__

    def counting(self: SyncPrefectClient, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting)
    twin = deployed.deployable(_tasks_in_a_row)
    clients = []
    for n in (2, 12):
        built.clear()
        assert run(twin, n=n, submitted=submitted) == sum(range(n))
        clients.append(len(built))
    assert clients[0] == clients[1], f"clients built for 2 and 12 task runs: {clients}"
