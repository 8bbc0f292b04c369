"""`pmsync backfill-deals`, `pmsync deadletters`, `pmsync redrive` (deal events, issue 4).

Registered on the app in `pmsync.cli`. Heavy imports happen inside the commands (`--help` stays fast).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from cyclopts import Parameter

DealStatus = Literal["open", "won", "lost", "deleted"]


def _parse_when(text: str, what: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO date-time (naive means UTC)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def backfill_deals(
    *,
    since: str,
    until: str | None = None,
    status: list[DealStatus] | None = None,
    archived: bool = True,
    dry_run: bool = False,
) -> int:
    """Send Maileon contact events for Pipedrive deals changed in a window (exactly once, resumable).

    Parameters
    ----------
    since
        Start of the window, inclusive: YYYY-MM-DD (midnight UTC) or an ISO date-time.
    until
        End of the window, exclusive (default: now).
    status
        Deal status to include; repeat for several (open, won, lost, deleted). Default: all four.
    archived
        Also read archived deals (--no-archived leaves them out).
    dry_run
        Count what would be sent; write nothing to the outbox or Maileon.
    """
    from flows.deals import backfill_deal_events

    try:
        start = _parse_when(since, "--since")
        end = _parse_when(until, "--until") if until else None
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    report = backfill_deal_events(since=start, until=end, statuses=list(status) if status else None,
                                  include_archived=archived, dry_run=dry_run)  # fmt: skip
    print("Deal events backfill" + (" (dry run: nothing written)" if dry_run else "") + ":")
    width = max(len(row["what"]) for row in report.rows())
    for row in report.rows():
        print(f"  {row['what']:<{width}}  {row['count']}")
    if not report.complete:
        print("Stopped early: run the same command again to resume from the checkpoint.")
        return 1
    return 0


def deadletters(*, limit: int = 100, json: bool = False) -> int:
    """List deal events that were not sent (dead letters), oldest first, with the reason.

    Parameters
    ----------
    limit
        Show at most this many.
    json
        Print JSON lines instead of a table.
    """
    import json as jsonlib

    from tasks.deals import dead_letters
    from tasks.runtime import get_runtime

    rows = dead_letters(get_runtime(), limit)
    if json:
        for row in rows:
            print(jsonlib.dumps(row.model_dump(mode="json"), sort_keys=True))
        return 0
    if not rows:
        print("No dead letters: every deal event was sent or is still pending.")
        return 0
    print(f"{'key (pmsync redrive KEY)':<38} {'attempts':>8}  {'contact':<26} reason")
    for r in rows:
        print(f"{r.key:<38} {r.attempts:>8}  {r.email or '-':<26} {r.reason or '-'}")
    print(f"{len(rows)} dead letter(s). Re-drive with `pmsync redrive KEY …` or `pmsync redrive --all`.")
    return 0


def redrive(
    keys: list[str] | None = None,
    /,
    *,
    all_: Annotated[bool, Parameter(name="--all")] = False,
    send: bool = True,
) -> int:
    """Move dead-lettered deal events back to pending and send them again.

    Parameters
    ----------
    keys
        Keys as `pmsync deadletters` prints them: DEAL_ID:KIND:TIME, e.g. 42:updated:2026-03-02T10:30:15Z.
    all_
        Re-drive every dead letter.
    send
        Send right away (--no-send: leave them pending for the next run).
    """
    from tasks.deals import parse_outbox_key
    from tasks.runtime import get_runtime

    if bool(keys) == all_:
        print("error: name the keys to re-drive, or pass --all (not both)")
        return 2
    try:
        parsed = [parse_outbox_key(k) for k in keys or []]
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    moved = get_runtime().store.redrive("all" if all_ else parsed)
    print(f"Re-drove {moved} dead letter(s) to pending.")
    if keys and moved < len(parsed):
        print(f"{len(parsed) - moved} key(s) were not dead letters (unknown, pending or already sent).")
    if send and moved:
        from flows.deals import send_deal_events

        summary = send_deal_events()
        print(f"Sent {summary.sent}; failed again and pending {summary.retry_later}; "
              f"dead-lettered again {summary.dead}.")  # fmt: skip
    return 0


__all__ = ["backfill_deals", "deadletters", "redrive"]
