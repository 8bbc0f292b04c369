"""The `pmsync` command line (cyclopts, the CLI library Prefect already brings).

Each command parses its arguments, calls a flow or a simulator, and prints what it did in plain words.
Heavy imports happen inside the commands so `pmsync --help` stays fast.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any

from cyclopts import App

from pmsync import __version__

app = App(
    name="pmsync",
    help="Consent-safe two-way sync between Pipedrive and Maileon, run as Prefect flows.",
    version=__version__,
)


@app.command
def simulate(
    *,
    pipedrive_port: int = 8101,
    maileon_port: int = 8102,
    seed_persons: int = 200,
    seed_deals: int = 100,
    seed_contacts: int = 0,
    pipedrive_token: str = "sim-pipedrive-token",
    maileon_key: str = "sim-maileon-key",
    duration: float = 0.0,
) -> int:
    """Serve the Pipedrive and Maileon simulators on loopback until interrupted.

    Parameters
    ----------
    pipedrive_port
        Port of the Pipedrive simulator (0 picks a free one).
    maileon_port
        Port of the Maileon simulator (0 picks a free one).
    seed_persons
        Persons to seed in Pipedrive (with organizations, owners, shared and missing emails).
    seed_deals
        Deals to seed in Pipedrive.
    seed_contacts
        Contacts to seed in Maileon (none by default: pmsync creates them).
    pipedrive_token
        API token the Pipedrive simulator accepts.
    maileon_key
        API key the Maileon simulator accepts.
    duration
        Stop after this many seconds (0 = run until Ctrl-C).
    """
    from simulators.common import SimServer
    from simulators.maileon import MaileonSim
    from simulators.pipedrive import PipedriveSim

    pipedrive = PipedriveSim(token=pipedrive_token)
    maileon = MaileonSim(api_key=maileon_key)
    started = time.monotonic()
    pipedrive.seed(persons=seed_persons, deals=seed_deals)
    if seed_contacts:
        maileon.seed(contacts=seed_contacts)
    seeded_in = time.monotonic() - started
    with SimServer(pipedrive.app, port=pipedrive_port) as pd_server, SimServer(maileon.app, port=maileon_port) as ml_server:
        print(f"Seeded {seed_persons} persons, {seed_deals} deals, {seed_contacts} contacts in {seeded_in:.1f} s.")
        print(f"Pipedrive simulator: {pd_server.base_url}   (x-api-token: {pipedrive_token})")
        print(f"Maileon simulator:   {ml_server.base_url}/1.0   (API key: {maileon_key})")
        print("Point pmsync at them with:")
        print(f"  export PIPEDRIVE_BASE_URL={pd_server.base_url} PIPEDRIVE_API_TOKEN={pipedrive_token}")
        print(f"  export MAILEON_BASE_URL={ml_server.base_url}/1.0 MAILEON_API_KEY={maileon_key}")
        print("Control surface: GET /_sim/requests, POST /_sim/reset, POST /_sim/faults on both. Ctrl-C stops.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(timeout=duration or None)
    pipedrive.close()
    maileon.close()
    print("Simulators stopped.")
    return 0


def _print_story(report: Any) -> None:
    s = report.summary
    verb = "planned" if report.dry_run else "applied"
    writes = ", ".join(f"{k}={v}" for k, v in sorted(s.actions.items())) or "none"
    print(f"  {report.story:<32} scanned {report.scanned:>6}  decided {s.emails:>5}  {verb}: {writes}")
    if s.refused or s.pending_upgrade or s.failed:
        print(f"  {'':<32} refused by Pipedrive {s.refused}, pending_upgrade {s.pending_upgrade}, "
              f"not settled {s.failed} (retried next run)")


@app.command
def setup(*, webhook_url: str | None = None) -> int:
    """Validate both credentials; create the Newsletter person field and pmsync's Maileon custom fields;
    register pmsync's webhooks (idempotent: a re-run creates no duplicates).

    Parameters
    ----------
    webhook_url
        Public base URL of `pmsync serve`'s receiver (e.g. https://sync.example.com); default
        PMSYNC_WEBHOOK_URL. Needs PMSYNC_WEBHOOK_PASSWORD and PMSYNC_WEBHOOK_SECRET.
    """
    from flows.setup import setup as setup_flow
    from pmsync.commands.surface import print_webhooks

    report = setup_flow(webhook_url=webhook_url)
    print(f"Pipedrive company {report.pipedrive_company_id}, API user {report.pipedrive_user_id}; "
          f"Campaigns {'on' if report.campaigns_enabled else 'off'}.")
    print(f"Newsletter field {report.newsletter_field_key} "
          f"{'created' if report.newsletter_field_created else 'already present'}.")
    print(f"Maileon custom fields created: {', '.join(report.maileon_fields_created) or 'none (all present)'}.")
    types = report.deal_event_types
    if types is not None:
        done = [*(f"{t} created" for t in types.created),
                *(f"{t} gained {', '.join(a)}" for t, a in types.extended.items()),
                *(f"{t} present" for t in types.unchanged)]
        print(f"Deal event types: {'; '.join(done) or 'none'}.")
        for name, reasons in types.conflicts.items():
            print(f"  CONFLICT {name}: {'; '.join(reasons)} — left alone; its events are dead-lettered until fixed.")
    print_webhooks(report.webhooks)
    return 1 if types is not None and types.conflicts else 0


@app.command
def sync(*, dry_run: bool = False) -> int:
    """Run consent stories 1–4 once: unsubscribes, Pipedrive opt-outs, DOI confirmations, new subscribers.

    Parameters
    ----------
    dry_run
        Decide and print the plan; write nothing to Pipedrive, Maileon or the ledger.
    """
    from flows.consent import sync as sync_flow

    reports = sync_flow(dry_run=dry_run)
    print("Consent sync" + (" (dry run: nothing written)" if dry_run else "") + ":")
    for report in reports:
        _print_story(report)
    return 0


@app.command
def intake(
    *,
    email: str,
    source: str,
    name: str = "",
    consent: bool = False,
    double_opt_in: bool = False,
    unsubscribe: bool = False,
    dry_run: bool = False,
) -> int:
    """Take in one submission from a form, booking or other tool (story 5).

    Parameters
    ----------
    email
        The submitted email address.
    source
        Where it came from (recorded in the consent ledger), e.g. "website-form".
    name
        Full name (defaults to the email's local part when a person must be created).
    consent
        The person gave newsletter consent (--consent / --no-consent).
    double_opt_in
        Start a double opt-in in Maileon.
    unsubscribe
        An unsubscribe form: opt the email out everywhere.
    dry_run
        Print what would happen; write nothing.
    """
    from pydantic import ValidationError

    from flows.intake import intake as intake_flow
    from tasks.intake import IntakeSubmission

    try:
        submission = IntakeSubmission(email=email, name=name, consent=consent, double_opt_in=double_opt_in,
                                      unsubscribe=unsubscribe, source=source)
    except ValidationError as exc:
        print(f"error: {exc.errors()[0]['msg']}")
        return 2
    result = intake_flow(submission, dry_run=dry_run)
    who = f"person {', '.join(map(str, result.person_ids))}" if result.person_ids else "no Pipedrive person"
    print(f"Intake {result.email_masked}: {who}{' (created)' if result.created_person else ''}; "
          f"{'planned' if dry_run else 'applied'}: "
          f"{', '.join(f'{k}={v}' for k, v in sorted(result.summary.actions.items())) or 'no change'}.")
    return 0


@app.command
def audit(email: str, /, *, json: bool = False, all_rows: bool = False) -> int:
    """Print one email's consent history from the ledger (oldest first).

    Parameters
    ----------
    email
        The email address to look up.
    json
        Print JSON lines (every row) instead of a table.
    all_rows
        Also show the ``attempted`` rows written ahead of writes whose outcome is recorded (the table
        shows an ``attempted`` row only when a crash cut its write off).
    """
    import json as jsonlib

    from connectors.store import Store, without_settled_attempts
    from pmsync.rules.status import normalize_email

    store = Store.from_settings()
    rows = store.ledger_for_email(normalize_email(email))
    if not json and not all_rows:
        rows = without_settled_attempts(rows)
    if json:
        for row in rows:
            print(jsonlib.dumps(row.model_dump(mode="json"), sort_keys=True))
        return 0
    if not rows:
        print("No consent history recorded for this email.")
        return 1
    print(f"{'when (UTC)':<20} {'system':<9} {'field':<16} {'old':>14} → {'new':<14} {'outcome':<15} cause")
    for r in rows:
        print(f"{r.at:%Y-%m-%d %H:%M:%S} {r.system:<9} {r.field:<16} {r.old_value or '-'!s:>14} → "
              f"{r.new_value or '-'!s:<14} {r.outcome:<15} {r.cause_kind}:{r.cause_ref or ''}")
    return 0


# Deal events (issue 4): backfill, dead letters, re-drive.
from pmsync.commands import deals as _deals  # noqa: E402

app.command(_deals.backfill_deals, name="backfill-deals")
app.command(_deals.deadletters, name="deadletters")
app.command(_deals.redrive, name="redrive")


# Reconciliation (issue 5): drift report, repair below the brake.
from pmsync.commands import reconcile as _reconcile  # noqa: E402

app.command(_reconcile.reconcile)

# Prefect surface (issue 6): serve, demo, uninstall.
from pmsync.commands import surface as _surface  # noqa: E402

app.command(_surface.serve, name="serve")
app.command(_surface.demo, name="demo")
app.command(_surface.uninstall, name="uninstall")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
