"""The flows as their deployments run them (prefect.yaml's entrypoints, `pmsync serve`).

Each is an *async* twin of a flow in this package: same name, parameters, docstring and task runner,
and the same body — the sync flow's own function, run in a worker thread. Tests, the CLI and the
demo call the sync flows; deployments call these.

Why twins: Prefect 3.8.8's sync flow engine joins its heartbeat thread when a run ends, and that
thread sleeps in whole seconds (``prefect.flow_engine._send_heartbeats``), so every sync flow run
ends up to a second late — measured 1.08 s for an empty flow against 0.33 s as an async flow, whose
engine does not join the thread (bench/prefect_overhead.py --heartbeats). Heartbeats stay on: they
drive Prefect's zombie-run detection. pmsync publishes artifacts through ``tasks/artifacts.py``:
inside an async flow's run context Prefect's artifact functions would otherwise return an un-awaited
coroutine, even from sync code.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prefect import Flow
from prefect.context import SyncClientContext

from flows import consent, deals, inbox
from flows import intake as intake_flows
from flows import reconcile as reconcile_flows
from flows import setup as setup_flows
from flows import webhook_health as health_flows
from tasks.runtime import freeze_startup_objects

P = ParamSpec("P")
R = TypeVar("R")


def _with_one_sync_client(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` with one sync Prefect client for every sync task run it starts (threads of its task
    runner included: they copy this context). Without it, each task run in an async flow's context
    builds its own client – an httpx client with a fresh TLS context, ~20 ms of CPU every time
    (``SyncTaskRunEngine.initialize_run``), the bulk of the twins' overhead (consent sync over 1,000
    emails: +23 % → +4 % next to plain functions)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        freeze_startup_objects()
        with SyncClientContext.get_or_create():
            return fn(*args, **kwargs)

    return run


def deployable(sync_flow: Flow[P, R]) -> Flow[P, Coroutine[Any, Any, R]]:
    """``sync_flow`` as an async flow running the same function in a worker thread (see above)."""
    fn: Callable[P, R] = sync_flow.fn
    body = _with_one_sync_client(fn)

    # Name, docstring and signature (``__wrapped__``) are the sync function's; the module stays this
    # one, so that Prefect's entrypoint for it is ``flows/deployed.py:<name>``.
    @functools.wraps(fn, assigned=("__name__", "__qualname__", "__doc__"))
    async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(body, *args, **kwargs)

    # The parameters with their annotations resolved where they were written (this module does not
    # know e.g. `Mode`): Prefect builds the run form and validates parameters from these.
    run_in_thread.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    run_in_thread.__annotations__ = typing.get_type_hints(fn)

    return Flow(
        fn=run_in_thread,
        name=sync_flow.name,
        description=sync_flow.description,
        task_runner=sync_flow.task_runner,
        retries=sync_flow.retries,
        retry_delay_seconds=sync_flow.retry_delay_seconds,
        timeout_seconds=sync_flow.timeout_seconds,
        validate_parameters=sync_flow.should_validate_parameters,
        log_prints=sync_flow.log_prints,
    )


reconcile = deployable(reconcile_flows.reconcile)
sync = deployable(consent.sync)
unsubscribes_to_pipedrive = deployable(consent.unsubscribes_to_pipedrive)
optouts_to_maileon = deployable(consent.optouts_to_maileon)
doi_confirmations_to_pipedrive = deployable(consent.doi_confirmations_to_pipedrive)
subscribers_to_maileon = deployable(consent.subscribers_to_maileon)
webhook_health = deployable(health_flows.webhook_health)
send_deal_events = deployable(deals.send_deal_events)
backfill_deal_events = deployable(deals.backfill_deal_events)
deal_events_from_webhooks = deployable(deals.deal_events_from_webhooks)
drain_inbox = deployable(inbox.drain_inbox)
intake = deployable(intake_flows.intake)
setup = deployable(setup_flows.setup)
