"""Fault options both simulators share (`POST /_sim/faults`): a short Retry-After for fast tests, and
timeouts whose request is applied while the answer arrives too late."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import SimHandle
from tests.flows.conftest import sim_control


def _api_get(handle: SimHandle, maileon: bool, timeout: float = 10) -> httpx.Response:
    if maileon:
        return httpx.get(handle.base_url + "/ping", auth=("", handle.secret), timeout=timeout)
    return httpx.get(handle.base_url + "/api/v1/users/me", headers={"x-api-token": handle.secret}, timeout=timeout)


@pytest.mark.parametrize("which", ["pipedrive", "maileon"])
def test_fault_answers_ask_for_the_services_own_wait_unless_a_retry_after_is_configured(
    which: str, pipedrive_sim: SimHandle, maileon_sim: SimHandle
) -> None:
    handle, maileon = (maileon_sim, True) if which == "maileon" else (pipedrive_sim, False)
    sim_control(handle, "/_sim/faults", {"error_rate": 1.0})
    real = {_api_get(handle, maileon).headers.get("retry-after") for _ in range(30)}
    assert real <= {"1", "2", None} and real & {"1", "2"}

    sim_control(handle, "/_sim/faults", {"retry_after_seconds": 0.01})
    answers = [_api_get(handle, maileon) for _ in range(30)]
    assert {r.status_code for r in answers} <= {429, 500, 503}
    assert {r.headers.get("retry-after") for r in answers} <= {"0.01", None}
    assert {r.headers.get("x-ratelimit-reset") for r in answers} <= {"0.01", None}
    assert any(r.headers.get("retry-after") == "0.01" for r in answers)


def test_a_timeout_fault_applies_the_write_and_answers_after_the_clients_read_timeout(
    pipedrive_sim: SimHandle,
) -> None:
    sim_control(pipedrive_sim, "/_sim/faults", {"timeout_rate": 1.0, "timeout_ms": 300})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(pipedrive_sim.base_url + "/api/v2/persons", json={"name": "Late Answer", "owner_id": 1},
                   headers={"x-api-token": pipedrive_sim.secret}, timeout=0.1)
    assert time.monotonic() - started < 0.3
    assert [p.name for p in pipedrive_sim.sim.persons.values()] == ["Late Answer"]
    started = time.monotonic()  # the control surface is never held back
    [logged] = [r for r in sim_control(pipedrive_sim, "/_sim/requests", method="GET") if r["method"] == "POST"]
    assert logged["status"] in (200, 201) and time.monotonic() - started < 0.3


def test_faults_reset_to_the_real_services_behaviour(maileon_sim: SimHandle) -> None:
    sim_control(maileon_sim, "/_sim/faults", {"retry_after_seconds": 0.01, "timeout_rate": 0.5})
    assert sim_control(maileon_sim, "/_sim/reset") == {"ok": True}
    assert maileon_sim.sim.state.faults.retry_after_seconds is None
    assert maileon_sim.sim.state.faults.timeout_rate == 0.0
