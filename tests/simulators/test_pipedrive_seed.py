"""Seeding of the Pipedrive simulator: realistic, deterministic, fast and lean; and its token-cost table."""

from __future__ import annotations

import time

import pytest

from pmsync.rules.status import is_valid_email, normalize_email
from simulators.pipedrive import PipedriveSim
from simulators.pipedrive.costs import TOKEN_COSTS
from simulators.pipedrive.gen_costs import build_table, render, specs_dir
from tests.simulators.test_pipedrive_support import client


@pytest.fixture(scope="module")
def big() -> PipedriveSim:
    sim = PipedriveSim(webhook_time_scale=0.01)
    started = time.perf_counter()
    sim.seed(persons=100_000, deals=20_000, seed=7)
    sim.seeded_in = time.perf_counter() - started  # type: ignore[attr-defined]
    yield sim
    sim.close()


def _fingerprint(sim: PipedriveSim) -> list[tuple]:
    return [(p.id, p.name, p.emails, p.org_id, p.owner_id, p.update_time, sim.marketing_status(p.primary_email or ""))
            for p in list(sim.persons.values())[:300]]  # fmt: skip


def test_seeding_is_deterministic_for_a_seed_and_differs_between_seeds():
    a, b, c = PipedriveSim(), PipedriveSim(), PipedriveSim()
    try:
        a.seed(persons=500, deals=100, seed=1)
        b.seed(persons=500, deals=100, seed=1)
        c.seed(persons=500, deals=100, seed=2)
        assert _fingerprint(a) == _fingerprint(b)
        assert _fingerprint(a) != _fingerprint(c)
        assert [f.key for f in a.store.person_fields.custom()] == [
            f.key for f in b.store.person_fields.custom()
        ]
    finally:
        for sim in (a, b, c):
            sim.close()


def test_a_seeded_account_has_every_situation_the_sync_must_handle(pipedrive_sim):
    pipedrive_sim.sim.seed(persons=2000, deals=500)
    sim = pipedrive_sim.sim
    persons = list(sim.persons.values())
    primaries = [
        normalize_email(p.primary_email)
        for p in persons
        if p.primary_email and is_valid_email(p.primary_email)
    ]
    assert len(primaries) != len(set(primaries))  # some persons share an email
    assert any(not p.emails for p in persons)  # some have none
    assert any(p.emails and not is_valid_email(p.primary_email) for p in persons)  # some have an unusable one
    several = [p for p in persons if len(p.emails) > 1]
    assert several and any(not p.emails[0][1] for p in several)  # the primary is not always the first
    statuses = {sim.marketing_status(p.primary_email) for p in persons if p.primary_email}
    assert {"subscribed", "unsubscribed", "archived", "bounced", "no_consent"} <= statuses
    assert len({p.owner_id for p in persons}) >= 4 and any(p.org_id for p in persons)
    types = {f.field_type for f in sim.store.person_fields.custom()}
    assert {"enum", "set", "varchar", "double"} <= types
    assert "Newsletter" not in {f.name for f in sim.store.person_fields.custom()}
    deals = list(sim.deals.values())
    assert {d.status for d in deals} == {"open", "won", "lost"}
    assert any(d.is_deleted for d in deals) and any(d.is_archived for d in deals)
    assert any(d.person_id is None for d in deals)


def test_seeding_100k_persons_takes_a_few_seconds_and_stays_lean(big):
    assert big.seeded_in < 10.0, f"seeding 100k persons took {big.seeded_in:.1f} s"
    per_person = big.store.approx_bytes() / len(big.persons)
    assert per_person < 1200, f"{per_person:.0f} bytes per person"


def test_a_page_of_500_from_100k_persons_by_update_time_takes_a_few_ms(big):
    from starlette.datastructures import QueryParams

    from simulators.pipedrive import views
    from simulators.pipedrive.app import paged

    q = QueryParams({"limit": "500", "sort_by": "update_time", "updated_since": "2024-06-01T00:00:00Z"})
    store = big.store
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        rows, cursor = paged(store.persons, q, lambda p: not p.is_deleted, None)
        [views.person_rest(store, p, marketing=True) for p in rows]
        timings.append(time.perf_counter() - started)
    assert len(rows) == 500 and cursor
    assert min(timings) < 0.05, f"best page took {min(timings) * 1000:.1f} ms"


@pytest.mark.slow
def test_listing_all_100k_persons_over_http_in_pages_of_500_is_quick(big):
    from simulators.common import SimServer

    big.configure(burst_limit=10_000)
    server = SimServer(big.app)
    with server:
        from types import SimpleNamespace

        handle = SimpleNamespace(base_url=server.base_url, secret=big.token)
        with client(handle) as api:
            started, seen, cursor = time.perf_counter(), 0, None
            while True:
                params = {"limit": 500, "sort_by": "update_time", **({"cursor": cursor} if cursor else {})}
                body = api.get("/api/v2/persons", params=params).json()
                seen += len(body["data"])
                cursor = body["additional_data"]["next_cursor"]
                if not cursor:
                    break
            elapsed = time.perf_counter() - started
    assert seen == sum(1 for p in big.persons.values() if not p.is_deleted)
    assert elapsed < 30, f"200 pages took {elapsed:.1f} s"


@pytest.mark.skipif(
    not (specs_dir() / "pipedrive-openapi-v2.yaml").is_file(), reason="official specs not found"
)
def test_the_token_cost_table_matches_the_specs_x_token_cost():
    from tests.contract.openapi_spec import load_spec  # cached: the contract tests load the same specs

    table = build_table(specs={"v1": load_spec("v1"), "v2": load_spec("v2")})
    assert table == TOKEN_COSTS
    from pathlib import Path

    import simulators.pipedrive.costs as costs

    assert Path(costs.__file__).read_text(encoding="utf-8") == render(table), (
        "run python -m simulators.pipedrive.gen_costs"
    )
