"""Story 5: intake from third-party sources (forms, bookings, other tools).

Find-or-create the Pipedrive person race-safely (a store lock per email serialises concurrent
submissions, across processes), then let the one decision function handle the email with the intake
as its signal: consent only when `consent` is true, a DOI only when asked, an unsubscribe form is an
opt-out.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prefect import task
from pydantic import BaseModel, Field, model_validator

from pmsync.rules.status import is_valid_email, normalize_email
from tasks.account import Account
from tasks.consent import IntakeSignal, Settler, SettleSummary, mask
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import get_runtime

log = logging.getLogger("pmsync.intake")


class IntakeSubmission(BaseModel):
    email: str = Field(description="Email address as entered in the form")
    name: str = Field(default="", description="Full name; the email's local part when empty")
    consent: bool = Field(default=False, description="The person ticked the newsletter consent box")
    double_opt_in: bool = Field(default=True, description="Start a double opt-in in Maileon")
    unsubscribe: bool = Field(default=False, description="An unsubscribe form (an opt-out)")
    source: str = Field(min_length=1, max_length=200, description="Where the submission came from")

    @model_validator(mode="after")
    def _check(self) -> IntakeSubmission:
        if not is_valid_email(normalize_email(self.email)):
            raise ValueError(f"not a valid email address: {mask(self.email) if '@' in self.email else '(hidden)'}")
        if self.consent and self.unsubscribe:
            raise ValueError("a submission cannot give consent and unsubscribe at once")
        return self


class IntakeResult(BaseModel):
    email_masked: str
    person_ids: list[int]
    created_person: bool
    summary: SettleSummary


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only)
def take_in(account: Account, submission: IntakeSubmission, dry_run: bool = False) -> IntakeResult:
    rt = get_runtime()
    email = normalize_email(submission.email)
    created = False
    with rt.store.lock(f"intake:{email}"):
        ids = rt.pipedrive.find_person_ids_by_email(email)
        if not ids and not submission.unsubscribe and not dry_run:
            name = submission.name.strip() or email.split("@", 1)[0]
            person = rt.pipedrive.create_person(name, emails=[email])
            ids, created = [person.id], True
    signal = IntakeSignal(at=datetime.now(UTC), cause=f"intake:{submission.source}", consent=submission.consent,
                          double_opt_in=submission.double_opt_in, unsubscribe=submission.unsubscribe)
    summary = Settler(rt, account, dry_run=dry_run, cause_kind="intake").settle({email: signal}, person_ids={email: ids})
    if submission.unsubscribe and not ids and not dry_run:
        # Nobody in Pipedrive: the opt-out still reaches Maileon and the ledger (written ahead, so a
        # crash after Maileon applied it still leaves a trace).
        row: dict[str, Any] = {"email": email, "person_ids": [], "system": "maileon", "field": "permission", "old_value": None,
               "new_value": "unsubscribed", "cause_kind": "intake", "cause_ref": f"intake:{submission.source}",
               "detail": {"note": "unsubscribe form for an email no Pipedrive person has"}}
        rt.store.ledger_append([{**row, "outcome": "attempted"}])
        if rt.maileon.unsubscribe(email, reason=f"pmsync intake: {submission.source}"):
            summary.actions["unsubscribe_maileon"] = summary.actions.get("unsubscribe_maileon", 0) + 1
        rt.store.ledger_append([{**row, "outcome": "applied"}])
    return IntakeResult(email_masked=mask(email), person_ids=ids, created_person=created, summary=summary)
