"""prefect.yaml as a spec: a deployment per flow, the schedules of issue 6, a debounced webhook trigger
that avoids the lone-expression template bug, collision policies — `pmsync serve` mirrors it, and
`prefect deploy --all` accepts it on a real server."""

from __future__ import annotations

import importlib
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import Flow

from deployments.local_server import LocalPrefectServer, free_port, prefect_command
from deployments.receiver import event_names
from deployments.serve import PREFECT_YAML, PROJECT_ROOT, build_deployments, deployment_args, load_specs

SPECS = load_specs()


def spec(entrypoint: str, name: str | None = None) -> dict[str, Any]:
    return next(s for s in SPECS if s["entrypoint"] == entrypoint and (name is None or s["name"] == name))


def sync_flows() -> dict[str, Flow[Any, Any]]:
    """name in flows/deployed.py → sync flow, for every flow object defined in flows/*.py."""
    found: dict[str, Flow[Any, Any]] = {}
    for path in sorted((PROJECT_ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__ and path.stem != "deployed":
                found[attr] = value
    return found


def project_flows() -> dict[str, Flow[Any, Any]]:
    """entrypoint → the flow a deployment runs: the async twin of each sync flow (flows/deployed.py)."""
    deployed = importlib.import_module("flows.deployed")
    return {f"flows/deployed.py:{attr}": getattr(deployed, attr, None) for attr in sync_flows()}


def test_every_flow_has_a_deployment() -> None:
    entrypoints = {s["entrypoint"] for s in SPECS}
    missing = sorted(set(project_flows()) - entrypoints)
    assert not missing, f"flows without a deployment in prefect.yaml: {missing}"
    assert entrypoints <= set(project_flows())  # and no deployment of a flow that does not exist


def test_deployments_run_async_twins_of_the_flows_with_the_same_name_parameters_and_runner() -> None:
    """Prefect 3.8.8's sync engine ends every run up to a second late (its heartbeat thread's join)."""
    for attr, flow in sync_flows().items():
        twin = project_flows()[f"flows/deployed.py:{attr}"]
        assert twin is not None, f"flows/deployed.py has no twin of {attr}"
        assert twin.isasync and not flow.isasync
        assert twin.name == flow.name and twin.description == flow.description
        assert twin.parameters.model_dump() == flow.parameters.model_dump()
        assert type(twin.task_runner) is type(flow.task_runner)


def test_deployment_names_are_unique_per_flow() -> None:
    flows = project_flows()
    names = [f"{flows[s['entrypoint']].name}/{s['name']}" for s in SPECS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("entrypoint, name, schedule", [
    ("flows/deployed.py:reconcile", "incremental", {"interval": 900}),
    ("flows/deployed.py:reconcile", "nightly-full", {"cron": "0 2 * * *", "timezone": "UTC"}),
    ("flows/deployed.py:unsubscribes_to_pipedrive", "every-5-minutes", {"interval": 300}),
    ("flows/deployed.py:doi_confirmations_to_pipedrive", "every-10-minutes", {"interval": 600}),
])
def test_the_schedules_of_issue_6(entrypoint: str, name: str, schedule: dict[str, Any]) -> None:
    assert spec(entrypoint, name)["schedules"] == [schedule]


def test_the_reconcile_deployments_pass_their_mode() -> None:
    assert spec("flows/deployed.py:reconcile", "incremental")["parameters"] == {"mode": "incremental"}
    assert spec("flows/deployed.py:reconcile", "nightly-full")["parameters"] == {"mode": "full"}


def test_scheduled_syncs_cancel_a_new_run_while_one_is_running_and_the_drain_queues_it() -> None:
    for s in SPECS:
        if s.get("schedules") and s["entrypoint"] != "flows/deployed.py:drain_inbox":
            assert s["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}, s["name"]
    # A drain triggered while one runs must still run: deliveries may have arrived at its very end.
    assert spec("flows/deployed.py:drain_inbox")["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_the_webhook_trigger_is_debounced_and_matches_every_event_the_receiver_emits() -> None:
    from prefect.events import DeploymentEventTrigger
    from prefect.server.events.schemas.events import matches

    drain = spec("flows/deployed.py:drain_inbox")
    (raw,) = drain["triggers"]
    trigger = DeploymentEventTrigger(**raw)
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    # Debounce: the first event starts a run at once, events within `within` start none; the run waits
    # until the burst's first delivery is `collect_seconds` old. Safe only if that wait ends after the
    # trigger's window closes: every event of the window is stored by then.
    assert trigger.schedule_after == timedelta(0)
    assert timedelta(0) < trigger.within <= timedelta(seconds=trigger.parameters["collect_seconds"])
    for name in event_names():
        assert any(matches(pattern, name) for pattern in trigger.expect), name
        assert matches(trigger.match.root["prefect.resource.id"], f"pmsync.inbox.{name.split('.')[2]}")
    assert drain["schedules"], "a schedule drains what Prefect never heard of (events lost while it was down)"


def test_no_trigger_parameter_is_a_lone_template_expression() -> None:
    """Prefect ≥ 3.6.24 wraps a lone "{{ expr }}" in tojson, which fails on UUIDs and datetimes:
    the action fails and no run is created. Literal text around the expression (or | string) avoids it."""
    for s in SPECS:
        for trigger in s.get("triggers") or []:
            for value in (trigger.get("parameters") or {}).values():
                if isinstance(value, str) and "{{" in value:
                    stripped = value.strip()
                    lone = stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1
                    assert not lone or "| string" in stripped, value


def test_my_flows_offer_typed_described_parameters_for_the_custom_run_form() -> None:
    flows = project_flows()
    for entrypoint in ("flows/deployed.py:drain_inbox", "flows/deployed.py:webhook_health", "flows/deployed.py:setup"):
        schema = flows[entrypoint].parameters.model_dump()
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{entrypoint}: {name} has no description"
            assert prop.get("type") or prop.get("anyOf"), f"{entrypoint}: {name} has no type"


def test_serve_mirrors_prefect_yaml() -> None:
    served = build_deployments()
    assert len(served) == len(SPECS)
    flows = project_flows()
    for deployment, s in zip(served, SPECS, strict=True):
        assert deployment.name == s["name"]
        assert deployment.entrypoint.endswith(s["entrypoint"])
        assert deployment.parameters == (s.get("parameters") or {})
        assert len(deployment.schedules or []) == len(s.get("schedules") or [])
        assert len(deployment.triggers) == len(s.get("triggers") or [])
        limit = s.get("concurrency_limit")
        if limit:
            assert deployment.concurrency_limit == limit["limit"]
            assert deployment.concurrency_options.collision_strategy == limit["collision_strategy"]
        assert flows[s["entrypoint"]].name == deployment.flow_name


def test_serve_can_shorten_the_debounce_and_leave_out_schedules() -> None:
    args = deployment_args(debounce_seconds=1.5, schedules=False)
    drain = next(options for flow, options in args if flow.name == "drain-inbox")
    (trigger,) = drain["triggers"]
    assert trigger.within == timedelta(seconds=1.5) and trigger.parameters["collect_seconds"] == 1.5
    assert all(options["schedules"] is None for _, options in args)


@pytest.mark.prefect
def test_prefect_deploy_all_succeeds_against_a_local_server(tmp_path: Path) -> None:
    server = LocalPrefectServer(tmp_path / "prefect", port=free_port(), ui=False)
    with server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(tmp_path / "client"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")

        def prefect(*args: str) -> None:
            result = subprocess.run([*prefect_command(), *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                                    text=True, timeout=180)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        prefect("work-pool", "create", "local-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML))

        api = httpx.Client(base_url=server.api_url, timeout=30)
        deployments = api.post("/deployments/filter", json={}).json()
        flows = {f["id"]: f["name"] for f in api.post("/flows/filter", json={}).json()}
        deployed = {f"{flows[d['flow_id']]}/{d['name']}": d for d in deployments}
        expected = {f"{project_flows()[s['entrypoint']].name}/{s['name']}" for s in SPECS}
        assert set(deployed) == expected

        drain = deployed["drain-inbox/on-webhook"]
        assert drain["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert drain["parameter_openapi_schema"]["properties"]["batch_size"]["type"] == "integer"
        assert deployed["reconcile/nightly-full"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        assert deployed["reconcile/incremental"]["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        automations = api.post("/automations/filter", json={}).json()
        (webhook,) = [a for a in automations if a["name"] == "webhooks-received"]
        assert webhook["actions"][0]["deployment_id"] == drain["id"]
        assert webhook["trigger"]["within"] > 0
