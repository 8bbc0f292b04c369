"""Recovering an opt-out a salesperson overwrote before pmsync saw it (tasks/changelog.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.pipedrive_models import ChangelogEntry
from flows.reconcile import reconcile
from tasks.changelog import Resume, overwritten_optout
from tasks.reconcile import WATERMARK_CHANGELOG
from tasks.runtime import Runtime, use_runtime
from tests.conftest import SimHandle
from tests.flows.conftest import make_settings
from tests.flows.engine_free import without_engine

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def entry(minutes: int, old: str | None, new: str | None, key: str = "marketing_status", source: str = "app",
          actor: int = 1) -> ChangelogEntry:
    return ChangelogEntry(field_key=key, old_value=old, new_value=new, actor_user_id=actor,
                          time=(T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S"), change_source=source)


def test_a_status_moved_away_from_unsubscribed_since_the_mark_is_an_overwritten_opt_out() -> None:
    found = overwritten_optout([entry(5, "unsubscribed", "subscribed"), entry(4, "no_consent", "unsubscribed")], T0)
    assert found is not None and found.new_value == "subscribed" and found.time == T0 + timedelta(minutes=5)


def test_the_newest_overwrite_wins_and_other_fields_do_not_count() -> None:
    entries = [entry(9, "a@x.org", "b@x.org", key="email"), entry(8, "unsubscribed", "archived"),
               entry(6, "unsubscribed", "subscribed")]
    found = overwritten_optout(entries, T0)
    assert found is not None and found.new_value == "archived"


def test_changes_before_the_mark_are_not_read_further_than_the_first_older_entry() -> None:
    consumed: list[int] = []

    def lazy() -> Iterator[ChangelogEntry]:
        for n, e in enumerate([entry(1, "no_consent", "subscribed"), entry(-10, "unsubscribed", "subscribed"),
                               entry(-20, "no_consent", "unsubscribed")]):
            consumed.append(n)
            yield e

    assert overwritten_optout(lazy(), T0) is None
    assert consumed == [0, 1]  # stopped at the first entry older than the mark (no further page read)


def test_a_change_within_the_marks_second_still_counts() -> None:
    """Pipedrive keeps whole seconds: 12:00:00 may be 12:00:00.9, after a mark at 12:00:00.5."""
    assert overwritten_optout([entry(0, "unsubscribed", "subscribed")], T0 + timedelta(milliseconds=500)) is not None


def test_pmsyncs_own_api_writes_never_count_but_another_integrations_do() -> None:
    own = [entry(3, "unsubscribed", "subscribed", source="api", actor=42)]
    assert overwritten_optout(own, T0, api_user_id=42) is None
    assert overwritten_optout(own, T0, api_user_id=7) is not None


def test_a_capped_run_resumes_after_the_person_it_read_last_even_within_one_second() -> None:
    """A bulk edit gives hundreds of persons the same update_time: the (time, id) resume point moves
    through them; a time alone would read the same first ones again and again."""
    resume = Resume(T0, after_id=7)
    assert not resume.includes(7, T0) and not resume.includes(3, T0)
    assert resume.includes(8, T0) and resume.includes(1, T0 + timedelta(seconds=1))
    assert Resume.parse(resume.text()) == resume
    fresh = Resume(T0)  # after a complete run: everything updated since (within Pipedrive's second)
    assert fresh.includes(1, T0 - timedelta(milliseconds=500)) and not fresh.includes(1, T0 - timedelta(seconds=2))


@pytest.fixture
def rt(pipedrive_sim: SimHandle, maileon_sim: SimHandle, tmp_path: Path) -> Iterator[Runtime]:
    pipedrive_sim.sim.configure(campaigns_enabled=True, once_only_rule=False, subscriber_cap=None)
    runtime = Runtime.from_settings(make_settings(pipedrive_sim, maileon_sim, tmp_path / "pmsync.db",
                                                  PMSYNC_REPAIR_THRESHOLD=1.0, PMSYNC_CAMPAIGNS="on",
                                                  PMSYNC_CHANGELOG_READS_PER_RUN=1))
    with use_runtime(runtime), without_engine():
        yield runtime
    runtime.close()


def test_suspects_over_the_per_run_cap_are_reported_and_checked_again_by_the_next_run(
    rt: Runtime, pipedrive_sim: SimHandle
) -> None:
    ids = [pipedrive_sim.sim.ui_create_person(name=f"P{n}", owner_id=1,
                                              emails=[{"value": f"p{n}@example.org", "primary": True}]).id
           for n in range(3)]
    first = reconcile(mode="full")
    assert (first.changelog.suspects, first.changelog.read, first.changelog.left) == (3, 1, 2)
    assert "2 left for the next run" in first.markdown
    # the next run goes on right after the person read last (not past the ones left)
    assert Resume.parse(rt.store.get_watermark(WATERMARK_CHANGELOG) or "").after_id == ids[0]
    for email in ("p0@example.org", "p1@example.org"):
        pipedrive_sim.sim.set_email_status(email, "unsubscribed")
        pipedrive_sim.sim.set_email_status(email, "subscribed")
    found = 0
    for _ in range(4):  # one read per run: every suspect is read in turn, none is skipped for good
        found += reconcile(mode="incremental").changelog.optouts
    assert found == 2
    assert [pipedrive_sim.sim.person(pid)["marketing_status"] for pid in ids[:2]] == ["unsubscribed"] * 2
