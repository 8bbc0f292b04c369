"""Maileon simulator: deterministic, fast, memory-lean seeding and fast paging at 100,000 contacts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from simulators.maileon import MaileonSim
from tests.simulators.test_maileon_support import Api, contact_xml, field_values, xml


@pytest.fixture
def api(maileon_sim: object) -> Iterator[Api]:
    a = Api(maileon_sim)
    yield a
    a.close()


def test_seeding_100k_contacts_takes_seconds_not_minutes_and_paging_stays_fast(api: Api) -> None:
    started = time.perf_counter()
    counts = api.sim.seed(100_000, seed=1)
    assert time.perf_counter() - started < 5.0
    assert counts["live"] + counts["unsubscribed"] == 100_000
    timings = []
    for index in (1, 50, 97):
        started = time.perf_counter()
        r = api.get(
            "/contacts", params={"page_index": index, "page_size": 1000, "standard_field": "FIRSTNAME"}
        )
        timings.append(time.perf_counter() - started)
        assert r.status_code == 200
        assert r.headers["X-Items"] == str(counts["live"])
    assert min(timings) < 0.1, timings  # a page of 1000 renders in a few ms; HTTP adds a little
    in_process = api.sim.store
    started = time.perf_counter()
    for _ in range(20):
        in_process.ordered()[50_000:51_000]
    assert time.perf_counter() - started < 0.05


def test_seeding_is_deterministic(api: Api) -> None:
    other = MaileonSim(api_key="x")
    try:
        assert other.seed(2_000, seed=7) == api.sim.seed(2_000, seed=7)
        mine = [
            (c.id, c.email, c.permission, c.external_id, c.standard, c.custom)
            for c in api.sim.store.ordered()
        ]
        theirs = [
            (c.id, c.email, c.permission, c.external_id, c.standard, c.custom) for c in other.store.ordered()
        ]
        assert mine == theirs
        assert [u.as_dict()["email"] for u in api.sim.store.unsubs] == [
            u.as_dict()["email"] for u in other.store.unsubs
        ]
    finally:
        other.close()


def test_seed_mix_covers_permissions_unsubscribed_pending_doi_and_pmsync_contacts(api: Api) -> None:
    counts = api.ctl("POST", "/seed", {"contacts": 5_000, "seed": 3}).json()
    assert counts["ok"] is True
    live = api.sim.store.ordered()
    assert {c.permission for c in live} == {1, 2, 3, 4, 5, 6}
    assert 0.02 < counts["unsubscribed"] / 5_000 < 0.04
    assert 0.03 < counts["pending_doi"] / 5_000 < 0.07
    assert 0.25 < counts["created_by_pmsync"] / len(live) < 0.35
    report = api.get("/reports/unsubscriptions", params={"page_size": 1000})
    assert report.headers["X-Items"] == str(counts["unsubscribed"])
    stamps = [u.findtext("timestamp") or "" for u in xml(report)]
    assert stamps == sorted(stamps)
    pending = api.ctl("GET", "/doi/pending").json()
    assert len(pending) == counts["pending_doi"]
    assert api.ctl("POST", "/doi/confirm", {"email": pending[0]["email"]}).status_code == 200
    fields = xml(api.get("/contacts/fields/custom"))
    assert [f.findtext("name") for f in fields] == ["createdByPipedrive"]
    pmsync = next(c for c in live if c.custom)
    got = api.contact(pmsync.email or "", custom=["createdByPipedrive"])
    assert field_values(got, "custom") == {"createdByPipedrive": "true"}
    assert got.findtext("external_id", "").startswith("pd-")


def test_unsubscribed_seed_contacts_are_not_listed_and_can_be_reimported_by_the_trap(api: Api) -> None:
    api.sim.seed(2_000, seed=5)
    gone = api.sim.store.unsubs[0].email
    assert gone is not None
    assert api.get(f"/contacts/email/{gone}").status_code == 404
    r = api.post_xml("/contacts", f"<contacts><contact><email>{gone}</email></contact></contacts>",
                     params={"reimport_unsubscribed_contacts": "false"})  # fmt: skip
    assert xml(r).findtext("count_unsubscribed_contacts") == "1"


def test_updated_after_on_a_seeded_account_pages_one_filtered_list(api: Api) -> None:
    api.sim.seed(20_000, seed=2)
    api.sim.advance_clock(5)
    watermark = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(api.sim.store.now()))
    api.sim.advance_clock(5)
    for n in (10, 20, 30):
        api.create(f"person{n}@example.com", contact_xml({"CITY": f"Town {n}"}), sync_mode=1)
    r = api.get("/contacts", params={"updated_after": watermark, "page_size": 2})
    assert (r.headers["X-Items"], r.headers["X-Pages"]) == ("3", "2")
    page2 = api.get("/contacts", params={"updated_after": watermark, "page_size": 2, "page_index": 2})
    assert [c.findtext("email") for c in xml(r)] + [c.findtext("email") for c in xml(page2)] == [
        "person10@example.com", "person20@example.com", "person30@example.com",
    ]  # fmt: skip
