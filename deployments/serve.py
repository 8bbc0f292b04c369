"""`pmsync serve`: the webhook receiver and every deployment of ``prefect.yaml``, in one process.

The deployments are read from ``prefect.yaml`` — names, entrypoints, parameters, schedules, event
triggers, concurrency limits, tags — and served from Python (``flow.to_deployment`` + a Prefect
``Runner``), so the file stays the one description of how runs start. Flow runs execute in
subprocesses, as with ``prefect.serve``.

One process, three parts, started in this order and stopped in reverse (Ctrl-C or SIGTERM):

1. the Prefect API: PREFECT_API_URL, or a local ``prefect server start`` under ``./.pmsync/prefect``
   (the ephemeral API runs no scheduler);
2. the receiver (uvicorn, its own thread): answers webhooks whatever Prefect is doing;
3. the runner (its own thread and event loop): registers the deployments, polls for runs, starts
   them. If Prefect becomes unreachable the runner stops; it is restarted with back-off while the
   receiver keeps storing webhooks, and the drain catches up once Prefect is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments import fast_start
from deployments.local_server import LocalPrefectServer, configured_api_url, restore_api, use_api
from deployments.receiver import ReceiverServer, create_app
from pmsync.settings import Settings

log = logging.getLogger("pmsync.serve")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
#: Seconds between the runner's polls for due runs (Prefect's default, 10 s, would add up to 10 s to
#: every webhook-triggered run).
QUERY_SECONDS = 1.0
#: The deployment that drains the webhook inbox ("<flow>/<deployment>").
DRAIN_DEPLOYMENT = "drain-inbox/on-webhook"


def load_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` of a prefect.yaml (YAML anchors resolved)."""
    data = yaml.safe_load(path.read_text())
    return list(data.get("deployments") or [])


def load_flow(entrypoint: str) -> Any:
    """``flows/inbox.py:drain_inbox`` → the flow object (imported as a module of this project)."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _schedules(spec: dict[str, Any]) -> list[Any]:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    out: list[Any] = []
    for item in spec.get("schedules") or []:
        if item.get("active") is False:
            continue
        tz = item.get("timezone")
        if "interval" in item:
            kwargs: dict[str, Any] = {"interval": timedelta(seconds=float(item["interval"]))}
            if item.get("anchor_date"):
                kwargs["anchor_date"] = item["anchor_date"]
            out.append(IntervalSchedule(**kwargs, timezone=tz))
        elif "cron" in item:
            out.append(CronSchedule(cron=item["cron"], timezone=tz))
        elif "rrule" in item:
            out.append(RRuleSchedule(rrule=item["rrule"], timezone=tz))
    return out


def _triggers(spec: dict[str, Any], debounce_seconds: float | None) -> list[Any]:
    from prefect.events import DeploymentEventTrigger

    out = []
    for item in spec.get("triggers") or []:
        item = dict(item)
        if debounce_seconds is not None and item.get("type", "event") == "event":
            item["within"] = timedelta(seconds=debounce_seconds)
            if "collect_seconds" in (item.get("parameters") or {}):
                item["parameters"] = {**item["parameters"], "collect_seconds": debounce_seconds}
        out.append(DeploymentEventTrigger(**item))
    return out


def deployment_args(
    path: Path = PREFECT_YAML,
    *,
    debounce_seconds: float | None = None,
    schedules: bool = True,
    only: set[str] | None = None,
) -> list[tuple[Any, dict[str, Any]]]:
    """(flow, deployment options) per entry of ``prefect.yaml`` (``only``: "<flow>/<deployment>" names).

    ``debounce_seconds`` replaces the triggers' ``within`` and ``collect_seconds``; ``schedules=False``
    serves without schedules (the demo runs everything it needs itself). An entrypoint that cannot be
    imported is skipped with a warning (a flow not installed in this checkout).
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    out = []
    for spec in load_specs(path):
        try:
            flow = load_flow(spec["entrypoint"])
        except (ImportError, AttributeError) as exc:
            log.warning("skipping deployment %s (%s): %s", spec.get("name"), spec.get("entrypoint"), exc)
            continue
        if only is not None and f"{flow.name}/{spec['name']}" not in only:
            continue
        limit = spec.get("concurrency_limit")
        out.append((flow, {
            "name": spec["name"],
            "description": spec.get("description"),
            "tags": list(spec.get("tags") or []),
            "parameters": dict(spec.get("parameters") or {}),
            "schedules": _schedules(spec) if schedules else None,
            "triggers": _triggers(spec, debounce_seconds),
            "concurrency_limit": ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
        }))
    return out


def build_deployments(
    path: Path = PREFECT_YAML,
    *,
    debounce_seconds: float | None = None,
    schedules: bool = True,
    only: set[str] | None = None,
) -> list[Any]:
    """One ``RunnerDeployment`` per entry of ``prefect.yaml`` (what :class:`RunnerThread` serves)."""
    return [flow.to_deployment(**kwargs) for flow, kwargs in
            deployment_args(path, debounce_seconds=debounce_seconds, schedules=schedules, only=only)]


async def _api_up(api_url: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(f"{api_url.rstrip('/')}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _flush_prefect(timeout: float = 5.0) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)


class RunnerThread:
    """A Prefect ``Runner`` serving ``deployments`` ((flow, options) pairs) on its own thread and event
    loop; restarted with back-off when it stops on its own (Prefect unreachable), stopped for good by
    :meth:`stop`.

    Deployments are added with ``Runner.aadd_flow``, which keeps the flow object: runs then start with
    ``run_flow_in_subprocess`` (see ``fast_start``) instead of ``python -m prefect.engine``, which
    would import everything again for every run.
    """

    def __init__(self, deployments: list[tuple[Any, dict[str, Any]]], *, query_seconds: float = QUERY_SECONDS,
                 limit: int | None = 4, pause_on_shutdown: bool = True,
                 on_registered: Callable[[dict[str, UUID]], Awaitable[None]] | None = None,
                 api_url: str | None = None) -> None:
        self.deployments = deployments
        #: Checked before each (re)start: registering against an API that is down would sit in the
        #: Prefect client's own retries for a long time.
        self.api_url = api_url
        #: Called (in the runner's loop) each time the deployments were (re)registered, with their ids.
        self.on_registered = on_registered
        self.query_seconds = query_seconds
        self.limit = limit
        self.pause_on_shutdown = pause_on_shutdown
        self.started = threading.Event()
        self.restarts = 0
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread = threading.Thread(target=self._main, name="pmsync-runner", daemon=True)

    def start(self, timeout: float = 120.0) -> RunnerThread:
        self._thread.start()
        if not self.started.wait(timeout):
            raise RuntimeError(f"the deployments were not registered with Prefect within {timeout:.0f} s")
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from prefect.runner import Runner

        self._loop = asyncio.get_running_loop()
        backoff = 1.0
        while not self._stop.is_set():
            if self.api_url and not await _api_up(self.api_url):
                await asyncio.sleep(1.0)
                continue
            runner = Runner(name="pmsync", query_seconds=self.query_seconds, limit=self.limit,
                            pause_on_shutdown=self.pause_on_shutdown)
            self._runner = runner
            try:
                ids: dict[str, UUID] = {}
                for flow, options in self.deployments:
                    ids[f"{flow.name}/{options['name']}"] = await runner.aadd_flow(flow, **options)
                if self.on_registered is not None:
                    try:
                        await self.on_registered(ids)
                    except Exception as exc:  # a catch-up is a courtesy; the schedules catch up anyway
                        log.warning("catch-up after (re)registering failed: %s", exc)
                self.started.set()
                backoff = 1.0
                await runner.start()
            except asyncio.CancelledError:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("the Prefect runner stopped (%s: %s); restarting in %.0f s — webhooks are still "
                            "received and stored", type(exc).__name__, exc, backoff)
            finally:
                self._runner = None
            if self._stop.is_set():
                break
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None and loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=timeout)
        self._thread.join(timeout=timeout)


class Service:
    """Everything `pmsync serve` runs; :meth:`start` then :meth:`wait` (or use as a context manager)."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        state_dir: Path | None = None,
        debounce_seconds: float | None = None,
        schedules: bool = True,
        only: set[str] | None = None,
        prefect_port: int | None = None,
        fast: bool = True,
        own_server: bool = False,
        prefect_database_url: str | None = None,
        runner: bool = True,
    ) -> None:
        self.settings = settings
        self.host = host or settings.receiver_host
        self.port = settings.receiver_port if port is None else port
        self.state_dir = state_dir or settings.state_dir
        self.debounce_seconds = settings.webhook_debounce_seconds if debounce_seconds is None else debounce_seconds
        self.schedules = schedules
        self.only = only
        self.prefect_port = prefect_port
        self.fast = fast
        #: Start a local Prefect server even when an API URL is configured (demo, tests, benchmarks).
        self.own_server = own_server
        #: The local server's database (None: SQLite under the state dir, or the environment's choice).
        self.prefect_database_url = prefect_database_url
        #: False: the receiver alone (scaled out: workers on other machines run the deployments).
        self.serve_deployments = runner
        self.local_server: LocalPrefectServer | None = None
        self.receiver: ReceiverServer | None = None
        self.runner: RunnerThread | None = None
        self.api_url: str | None = None
        self._previous_api_url: str | None = None
        self._settings_context: Any = None
        self._stop = threading.Event()

    def start(self) -> Service:
        try:
            if self.fast and fast_start.install():
                fast_start.warm()  # the fork server imports the flows while Prefect starts
            self.api_url = None if self.own_server else configured_api_url()
            if not self.api_url:
                self.local_server = LocalPrefectServer(self.state_dir / "prefect", port=self.prefect_port,
                                                       database_url=self.prefect_database_url).start()
                self._previous_api_url = os.environ.get("PREFECT_API_URL")
                use_api(self.local_server.api_url)
                self._settings_context = temporary_settings(updates={PREFECT_API_URL: self.local_server.api_url})
                self._settings_context.__enter__()  # this thread (a caller's own settings context included)
                self.api_url = self.local_server.api_url
            self.receiver = ReceiverServer(create_app(self.settings, prefect_api_url=self.api_url),
                                           host=self.host, port=self.port).start()
            if self.serve_deployments:
                deployments = deployment_args(debounce_seconds=self.debounce_seconds, schedules=self.schedules,
                                              only=self.only)
                self.runner = RunnerThread(deployments, on_registered=self._drain_leftovers,
                                           api_url=self.api_url).start()
        except BaseException:
            self.stop()
            raise
        return self

    async def _drain_leftovers(self, ids: dict[str, UUID]) -> None:
        """Deliveries stored while Prefect was unreachable (or pmsync was not serving) are drained as soon
        as the deployments are registered again — without waiting for an event or the schedule."""
        from prefect.client.orchestration import get_client
        from starlette.concurrency import run_in_threadpool

        drain = ids.get(DRAIN_DEPLOYMENT)
        if drain is None or self.receiver is None:
            return
        pending = await run_in_threadpool(self.receiver.app.state.receiver.store.inbox_pending_count)
        if not pending:
            return
        async with get_client() as client:
            await client.create_flow_run_from_deployment(
                drain, parameters={"triggered_by": f"pmsync serve: {pending} stored deliveries waiting"})
        log.info("%d stored deliveries were waiting: a drain run was started", pending)

    @property
    def ui_url(self) -> str | None:
        return self.api_url.removesuffix("/api") if self.api_url else None

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def wait(self, duration: float | None = None) -> None:
        """Block until Ctrl-C / SIGTERM (main thread) or ``duration`` seconds."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._stop.wait(0.5)

    def stop(self) -> None:
        """Runner first (in-flight runs are cancelled, schedules paused), then the receiver (the
        inbox is durable), then the local Prefect server."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        fast_start.uninstall()
        if self.local_server is not None:
            _flush_prefect()  # logs and events of runs made in this process, while the server is up
            self.local_server.stop()
            self.local_server = None
            if self._settings_context is not None:
                with contextlib.suppress(Exception):
                    self._settings_context.__exit__(None, None, None)
                self._settings_context = None
            restore_api(self._previous_api_url)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
