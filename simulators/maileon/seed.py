"""Deterministic seeding: a realistic Maileon account in well under a second per 100,000 contacts.

Mix (fractions of `contacts`, drawn from ``random.Random(seed)``):

- 3 % unsubscribed: anonymized, present only in the unsubscription report (email/external id kept
  there, with field backups), sources mostly ``link``;
- 5 % pending DOI: permission 1 with an open DOI process;
- the rest: permission 1 (10 %), 2 soi (20 %), 3 coi (5 %), 4 doi (40 %), 5 doi+ (20 %), 6 other (5 %);
- 30 % of the live contacts were created by pmsync: custom field ``createdByPipedrive=true`` and
  ``external_id`` ``pd-<n>``.

Emails are ``person<n>@example.com`` (n = 1..contacts, lower case); names come from small shared pools
(memory-lean). Timestamps spread over the year before the simulator's clock.
"""

from __future__ import annotations

import random

from .store import Contact, DoiPending, Store, Unsubscription

CREATED_BY_FIELD = "createdByPipedrive"

FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hannah", "Jonas", "Katrin", "Lukas", "Mia",
    "Noah", "Olga", "Paul", "Rosa", "Simon", "Tina", "Uwe", "Vera", "Wim", "Yara", "Zoe", "Max",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Koch", "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Braun", "Zimmermann", "Krüger", "Hartmann",
)  # fmt: skip
CITIES = ("Berlin", "Hamburg", "München", "Köln", "Frankfurt", "Stuttgart", "Leipzig", "Dresden", None, None)
UNSUB_SOURCES = ("link", "link", "link", "list-unsubscribe-header", "reply", "complaint")
YEAR = 365 * 24 * 3600.0

_PERMISSION_CUMULATIVE = ((0.10, 1), (0.30, 2), (0.35, 3), (0.75, 4), (0.95, 5), (1.0, 6))


def _permission(r: float) -> int:
    for bound, perm in _PERMISSION_CUMULATIVE:
        if r < bound:
            return perm
    return 6


def seed_store(store: Store, contacts: int, seed: int = 0) -> dict[str, int]:
    """Add `contacts` contacts to `store` (expected empty; colliding emails are skipped)."""
    rng = random.Random(seed)
    rand = rng.random
    now = store.now()
    if CREATED_BY_FIELD not in store.custom_fields:
        store.custom_fields[CREATED_BY_FIELD] = "boolean"
    # shared value dicts' strings: names from pools, so each contact only owns its dict and email
    pmsync_flag = "true"
    unsubs: list[Unsubscription] = []
    counts = {"live": 0, "unsubscribed": 0, "pending_doi": 0, "created_by_pmsync": 0}
    start_id = store._next_contact_id
    for n in range(1, contacts + 1):
        email = f"person{n}@example.com"
        if email in store.by_email:
            continue
        cid = start_id + n - 1
        created = now - rand() * YEAR
        updated = created + rand() * (now - created)
        standard = {"FIRSTNAME": FIRST_NAMES[int(rand() * 24)], "LASTNAME": LAST_NAMES[int(rand() * 20)]}
        city = CITIES[int(rand() * 10)]
        if city is not None:
            standard["CITY"] = city
        by_pmsync = rand() < 0.30
        custom = {CREATED_BY_FIELD: pmsync_flag} if by_pmsync else None
        external_id = f"pd-{n}" if by_pmsync else None
        kind = rand()
        if kind < 0.03:
            ts = updated + rand() * (now - updated)
            mailing = 1000 + int(rand() * 50)
            unsubs.append(
                Unsubscription(
                    int(ts * 1000), cid, email, external_id, mailing, UNSUB_SOURCES[int(rand() * 6)], None,
                    store.next_msg_id(),
                    tuple(("standard", k, v) for k, v in standard.items())
                    + tuple(("custom", k, v) for k, v in (custom or {}).items()),
                )
            )  # fmt: skip
            anon = Contact(cid, None, 1, None, created, ts)
            store.anonymous[cid] = anon
            store.unsub_emails.add(email)
            store._next_contact_id = max(store._next_contact_id, cid + 1)
            counts["unsubscribed"] += 1
            continue
        doi = None
        if kind < 0.08:
            permission = 1
            doi = DoiPending(None, rand() < 0.5, "seed", None, updated)
            counts["pending_doi"] += 1
        else:
            permission = _permission(rand())
        store.add_seeded(
            Contact(cid, email, permission, external_id, created, updated, standard, custom, doi)
        )
        counts["live"] += 1
        counts["created_by_pmsync"] += by_pmsync
    unsubs.sort(key=lambda u: u.ts_ms)
    for u in unsubs:
        store.add_unsubscription(u)
    store._membership_changed()
    return counts
