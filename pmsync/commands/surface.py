"""How pmsync is run (issue 6): `pmsync serve`, `pmsync demo`, `pmsync uninstall`, and the webhook
lines of `pmsync setup`. Heavy imports stay inside the functions (`pmsync --help` stays fast)."""

from __future__ import annotations

from typing import Any


def serve(*, port: int | None = None, host: str | None = None, schedules: bool = True,
          debounce: float | None = None, receiver_only: bool = False) -> int:
    """Run the webhook receiver and serve every deployment (schedules and webhook triggers) until Ctrl-C.

    With PREFECT_API_URL unset a local Prefect server is started (SQLite under ./.pmsync/prefect/):
    Prefect's ephemeral mode runs no scheduler. Flow runs start in subprocesses of this process.

    Parameters
    ----------
    port
        Port of the webhook receiver (default PMSYNC_RECEIVER_PORT, 8100). Pipedrive posts to
        /webhooks/pipedrive, Maileon to /webhooks/maileon/EVENT.
    host
        Interface the receiver listens on (default PMSYNC_RECEIVER_HOST, 127.0.0.1; 0.0.0.0 for all).
    schedules
        Serve the deployments with their schedules (--no-schedules: webhook triggers and manual runs only).
    debounce
        Seconds a burst of webhooks is collected before one run drains it (default PMSYNC_WEBHOOK_DEBOUNCE_SECONDS).
    receiver_only
        Run the webhook receiver alone, for scaling out: the deployments are created with
        `prefect deploy --all` and run by `prefect worker start` on other machines; PREFECT_API_URL
        must name their Prefect server (the receiver sends its events there) and PMSYNC_DATABASE_URL
        the shared PostgreSQL store.
    """
    from deployments.serve import Service
    from pmsync.settings import get_settings

    settings = get_settings()
    for name, secret in (("PMSYNC_WEBHOOK_PASSWORD", settings.webhook_password),
                         ("PMSYNC_WEBHOOK_SECRET", settings.webhook_secret)):
        if not secret.get_secret_value():
            print(f"warning: {name} is not set: the receiver refuses every delivery it would protect")
    if receiver_only and not _api_url():
        print("error: --receiver-only needs PREFECT_API_URL: the Prefect server the workers use (the receiver "
              "sends its events there)")
        return 2
    service = Service(settings, host=host, port=port, debounce_seconds=debounce, schedules=schedules,
                      runner=not receiver_only)
    print("Starting" + (f" a local Prefect server ({_local_server_database()}), " if not _api_url() else " ")
          + ("the webhook receiver …" if receiver_only else "the webhook receiver and the runner …"), flush=True)
    try:
        service.start()
    except KeyboardInterrupt:
        print("Interrupted.")
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}")
        return 1
    assert service.receiver is not None
    print(f"Receiver:   {service.receiver.url}/webhooks/pipedrive  and  {service.receiver.url}/webhooks/maileon/EVENT")
    print(f"Prefect UI: {service.ui_url}")
    if service.runner is not None:
        print(f"Serving {len(service.runner.deployments)} deployments"
              f"{'' if schedules else ' (schedules off)'}; webhook bursts are drained "
              f"{service.debounce_seconds:g} s after their first event.")
    else:
        print("Receiver only: the deployments run on the workers of that Prefect server.")
    if not settings.webhook_url:
        print("Webhooks: run `pmsync setup --webhook-url https://<public address of this receiver>` once.")
    print("Ctrl-C (or SIGTERM) stops everything.", flush=True)
    try:
        service.wait()
    finally:
        print("Stopping: runs in flight are cancelled, the receiver closes, Prefect stops …", flush=True)
        service.stop()
    print("Stopped.")
    return 0


def _local_server_database() -> str:
    from deployments.local_server import configured_database

    database = configured_database()
    return f"database {database}" if database else "SQLite under ./.pmsync/prefect/"


def _api_url() -> str | None:
    from deployments.local_server import configured_api_url

    return configured_api_url()


def demo(*, keep_running: bool = False) -> int:
    """Everything local, end to end: simulators, Prefect, receiver, setup, a full reconcile, then people
    act and their acts arrive as real webhooks. Prints what happened; stops by itself (~1–2 minutes).

    State goes to ./.pmsync/demo/ (emptied first); your own data is never touched.

    Parameters
    ----------
    keep_running
        Keep everything running after the summary (browse the Prefect UI); Ctrl-C stops.
    """
    from deployments.demo import run_demo

    return run_demo(keep_running=keep_running)


def uninstall(*, webhook_url: str | None = None) -> int:
    """Remove pmsync's webhooks from Pipedrive and Maileon. All data stays (fields, contacts, ledger, store).

    Parameters
    ----------
    webhook_url
        Remove only the webhooks pointing at this receiver (default: PMSYNC_WEBHOOK_URL; none: every webhook
        pointing at a pmsync receiver path).
    """
    from connectors.errors import ConnectorError
    from tasks.runtime import get_runtime
    from tasks.webhooks import remove_webhooks

    try:
        report = remove_webhooks(get_runtime(), webhook_url)
    except (ConnectorError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    if report.removed:
        print(f"Removed {len(report.removed)} webhooks: {', '.join(report.removed)}.")
    else:
        print("No pmsync webhooks were registered.")
    print("Data is kept: the Newsletter field, Maileon contacts and fields, and pmsync's store (ledger, inbox).")
    return 0


def print_webhooks(report: Any) -> None:
    """The webhook lines of `pmsync setup` (report: tasks.webhooks.WebhookReport or None)."""
    if report is None:
        print("Webhooks: not registered (no --webhook-url / PMSYNC_WEBHOOK_URL); the schedules alone keep "
              "both systems in sync, only slower.")
        return
    print(f"Webhooks at {report.url}: " + "; ".join(report.lines()) + ".")
