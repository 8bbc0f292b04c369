"""Opt-outs a salesperson overwrote before pmsync saw them, recovered from Pipedrive's person changelog.

A salesperson sets marketing_status to unsubscribed and later to something else (subscribed, say).
If the first webhook was lost, neither system's current state shows the opt-out any more – only
``GET /v1/persons/{id}/changelog`` does. The reconcile reads it for the persons that could hide one:
Campaigns on, updated since pmsync last looked, status now not ``unsubscribed`` and not
``unsubscribed`` in pmsync's snapshot either (an opt-out pmsync saw is already in its consent state).
Each read costs 20 tokens per page, so a run reads at most ``PMSYNC_CHANGELOG_READS_PER_RUN``
persons, least recently updated first, and reports the ones it left: the next run starts after the
last person read, so every suspect is read once, however many there are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from connectors.errors import BudgetExhausted
from connectors.pipedrive_models import ChangelogEntry
from pmsync.rules.status import MarketingStatus
from tasks.consent import PipedriveSignal
from tasks.retry import TASK_RETRY_DELAYS, transient_only
from tasks.runtime import get_runtime

log = logging.getLogger("pmsync.changelog")

#: Pipedrive keeps whole seconds: a change in the watermark's second may be listed at its start.
_TIME_RESOLUTION = timedelta(seconds=1)


class Resume(NamedTuple):
    """Where a reconcile's changelog check starts: persons updated at or after ``since``, or – going on
    after a capped run – after the person (``update_time``, ``person_id``) it read last."""

    since: datetime
    after_id: int = 0

    def includes(self, person_id: int, update_time: datetime) -> bool:
        if self.after_id:
            return (update_time, person_id) > (self.since, self.after_id)
        return update_time >= self.since - _TIME_RESOLUTION

    def text(self) -> str:
        return f"{self.since.isoformat()}|{self.after_id}" if self.after_id else self.since.isoformat()

    @classmethod
    def parse(cls, text: str) -> Resume:
        when, _, after = text.partition("|")
        return cls(datetime.fromisoformat(when), int(after or 0))


class Suspect(BaseModel):
    """A person whose status could hide an overwritten opt-out (see the module docstring)."""

    person_id: int
    email: str
    update_time: datetime


class Recovered(BaseModel):
    """What one changelog pass found: a signal per email (the newest overwritten opt-out)."""

    signals: dict[str, PipedriveSignal] = Field(default_factory=dict)
    person_ids: dict[str, list[int]] = Field(default_factory=dict)
    read: int = 0
    #: Suspects not read this run (the per-run cap, or the daily budget ran out).
    left: int = 0
    #: With ``left``: the last suspect read, as (update_time, person id) – where the next run goes on.
    read_until: tuple[datetime, int] | None = None


def overwritten_optout(entries: Iterable[ChangelogEntry], since: datetime,
                       api_user_id: int | None = None) -> ChangelogEntry | None:
    """The newest change that moved marketing_status *away from* unsubscribed at or after ``since``.

    ``entries`` newest first, as Pipedrive lists them; reading stops at the first older entry (the
    iterator is lazy: no page beyond it is fetched). pmsync's own API writes never count.
    """
    floor = since - _TIME_RESOLUTION
    for entry in entries:
        if entry.time < floor:
            return None
        if (entry.field_key == "marketing_status" and entry.old_value == MarketingStatus.UNSUBSCRIBED.value
                and entry.new_value != MarketingStatus.UNSUBSCRIBED.value
                and not (entry.change_source == "api" and api_user_id is not None
                         and entry.actor_user_id == api_user_id)):
            return entry
    return None


def _status(value: str | None) -> MarketingStatus | None:
    try:
        return MarketingStatus(str(value))
    except ValueError:
        return None


@task(retries=3, retry_delay_seconds=TASK_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def recover_overwritten_optouts(suspects: list[Suspect], since: datetime, api_user_id: int) -> Recovered:
    """Read the changelog of up to ``PMSYNC_CHANGELOG_READS_PER_RUN`` suspects (least recently updated
    first) → an opt-out signal for each email whose person's status was moved away from unsubscribed."""
    rt = get_runtime()
    cap = rt.settings.changelog_reads_per_run
    ordered = sorted(suspects, key=lambda s: (s.update_time, s.person_id))
    out = Recovered(left=max(0, len(ordered) - cap))
    for suspect in ordered[:cap]:
        try:
            entry = overwritten_optout(rt.pipedrive.iter_person_changelog(suspect.person_id), since, api_user_id)
        except BudgetExhausted:
            out.left += len(ordered[:cap]) - out.read
            log.warning("changelog: Pipedrive's daily budget ran out; %d person(s) left for the next run", out.left)
            break
        out.read += 1
        out.read_until = (suspect.update_time, suspect.person_id)
        if entry is None:
            continue
        signal = PipedriveSignal(
            at=entry.time, cause=f"pipedrive-changelog:{suspect.person_id}:{entry.time.isoformat()}",
            person_id=suspect.person_id, marketing_status=_status(entry.new_value),
            marketing_status_before=MarketingStatus.UNSUBSCRIBED, change_source=entry.change_source)
        current = out.signals.get(suspect.email)
        if current is None or signal.at > current.at:
            out.signals[suspect.email] = signal
        out.person_ids.setdefault(suspect.email, []).append(suspect.person_id)
    if out.left:
        log.warning("changelog: %d person(s) updated since the last run were not checked for an overwritten "
                    "opt-out yet (PMSYNC_CHANGELOG_READS_PER_RUN=%d); the next run goes on from there", out.left, cap)
    return out
