"""Story 5: a third-party submission (form, booking, tool) enters Pipedrive and, with consent, Maileon."""

from __future__ import annotations

from prefect import flow

from tasks.intake import IntakeResult, IntakeSubmission, take_in
from tasks.state import account_facts


@flow(name="intake")
def intake(submission: IntakeSubmission, dry_run: bool = False) -> IntakeResult:
    """Find or create the person; consent only when given; DOI where asked; unsubscribe forms opt out.

    Args:
        submission: The submitted form: email, name, consent, double_opt_in, unsubscribe, source.
        dry_run: Report what would happen; write nothing.
    """
    return take_in(account_facts(), submission, dry_run=dry_run)
