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

from flows.consent import doi_confirmations_to_pipedrive as _doi_confirmations_to_pipedrive
from flows.consent import optouts_to_maileon as _optouts_to_maileon
from flows.consent import subscribers_to_maileon as _subscribers_to_maileon
from flows.consent import sync as _sync
from flows.consent import unsubscribes_to_pipedrive as _unsubscribes_to_pipedrive
from flows.deals import backfill_deal_events as _backfill_deal_events
from flows.deals import deal_events_from_webhooks as _deal_events_from_webhooks
from flows.deals import send_deal_events as _send_deal_events
from flows.inbox import drain_inbox as _drain_inbox
from flows.intake import intake as _intake
from flows.reconcile import reconcile as _reconcile
from flows.setup import setup as _setup
from flows.webhook_health import webhook_health as _webhook_health

P = ParamSpec("P")
R = TypeVar("R")


def deployable(sync_flow: Flow[P, R]) -> Flow[P, Coroutine[Any, Any, R]]:
    """``sync_flow`` as an async flow running the same function in a worker thread (see above)."""
    fn: Callable[P, R] = sync_flow.fn

    # Name, docstring and signature (``__wrapped__``) are the sync function's; the module stays this
    # one, so that Prefect's entrypoint for it is ``flows/deployed.py:<name>``.
    @functools.wraps(fn, assigned=("__name__", "__qualname__", "__doc__"))
    async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

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


reconcile = deployable(_reconcile)
sync = deployable(_sync)
unsubscribes_to_pipedrive = deployable(_unsubscribes_to_pipedrive)
optouts_to_maileon = deployable(_optouts_to_maileon)
doi_confirmations_to_pipedrive = deployable(_doi_confirmations_to_pipedrive)
subscribers_to_maileon = deployable(_subscribers_to_maileon)
webhook_health = deployable(_webhook_health)
send_deal_events = deployable(_send_deal_events)
backfill_deal_events = deployable(_backfill_deal_events)
deal_events_from_webhooks = deployable(_deal_events_from_webhooks)
drain_inbox = deployable(_drain_inbox)
intake = deployable(_intake)
setup = deployable(_setup)
