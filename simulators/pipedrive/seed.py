"""The simulated company: its base (users, standard fields) and deterministic seeded data.

`seed_company(store, persons, deals, seed)` replaces all data with a realistic account:

- 6 users (user 1 is the API token's owner and admin), ~1 organization per 15 persons;
- person custom fields of the ordinary kinds (enum, set, varchar, double, monetary) — not the
  "Newsletter" field, which pmsync's setup creates;
- persons: most with one email, ~5 % without email, ~2 % with an unusable one, ~3 % with several
  (one primary, not always the first), ~2 % sharing an earlier person's primary email (hence its
  marketing_status); phones, owners, organizations and custom values spread around;
- marketing_status per email: subscribed, unsubscribed, archived and a few bounced;
- deals in every status: open, won, lost, deleted and archived, some without a person.

The same (persons, deals, seed) always gives the same data. Times lie between 2023-01-01 and
2025-01-01 so that anything written later through the API sorts after them.
"""

from __future__ import annotations

import random
from typing import Any

from pmsync.rules.status import COUNTS_TOWARDS_CAP, MarketingStatus, is_valid_email
from simulators.pipedrive.config import v1_time
from simulators.pipedrive.store import Deal, Email, Organization, Person, Store, norm_key

SEED_START = 1_672_531_200  # 2023-01-01T00:00:00Z
SEED_END = 1_735_689_600  # 2025-01-01T00:00:00Z

USERS = (
    (1, "Alex Admin", "alex.admin@pmsync-sim.example", True),
    (2, "Sam Sales", "sam.sales@pmsync-sim.example", False),
    (3, "Robin Reyes", "robin.reyes@pmsync-sim.example", False),
    (4, "Kim Novak", "kim.novak@pmsync-sim.example", False),
    (5, "Jo Lindqvist", "jo.lindqvist@pmsync-sim.example", False),
    (6, "Ari Tanaka", "ari.tanaka@pmsync-sim.example", False),
)

FIRST = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elif",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Katrin",
    "Lukas",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Queenie",
    "Rafael",
    "Sofia",
    "Tom",
    "Ute",
    "Viktor",
    "Wiebke",
    "Xaver",
    "Yasmin",
    "Zoe",
    "Aiko",
    "Bao",
    "Chiara",
    "Dmitri",
)
LAST = (
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Schwarz",
    "Zimmermann",
    "Braun",
    "Hofmann",
    "Hartmann",
    "Lange",
    "Krüger",
    "Rossi",
    "García",
    "Nowak",
    "Yilmaz",
    "Dubois",
    "Jensen",
    "Silva",
    "O'Brien",
)
ASCII = str.maketrans({"ü": "ue", "ö": "oe", "ä": "ae", "í": "i", "'": ""})
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "firma.example", "shop.example")
ORG_A = ("Blue", "North", "Bright", "Green", "Silver", "Rapid", "Urban", "Alpine", "Coastal", "Solid")
ORG_B = ("Harbor", "Forge", "Logistics", "Media", "Foods", "Systems", "Studio", "Partners", "Labs", "Works")
ORG_C = ("GmbH", "AG", "Ltd", "SE", "KG", "Inc.")
CITIES = (
    ("Berlin", "10115"),
    ("Hamburg", "20095"),
    ("München", "80331"),
    ("Köln", "50667"),
    ("Wien", "1010"),
)
DEAL_WORDS = ("License", "Renewal", "Onboarding", "Upgrade", "Consulting", "Pilot", "Support plan")
LOST_REASONS = ("Price", "Timing", "Went with competitor", "No budget")
WORK, HOME, OTHER = "work", "home", "other"
#: The first persons always cover each email situation (a draw in [0, 1) picks the branch below):
#: 1 has one email, 2 shares 1's email, 3 has none, 4 has several, 5 has an unusable one.
_FORCED_EMAIL_KIND = {1: 0.5, 2: 0.06, 3: 1e-9, 4: 0.10, 5: 0.08}


def setup_base(store: Store, now: int) -> None:
    """What every account has: users and the standard person/deal/organization fields."""
    for uid, name, email, admin in USERS:
        store.users[uid] = {
            "id": uid,
            "name": name,
            "email": email,
            "is_admin": admin,
            "active_flag": True,
            "phone": None,
            "created": v1_time(SEED_START - 86400 * 30),
            "last_login": v1_time(now),
        }
    pf = store.person_fields
    at = SEED_START - 86400 * 30
    pf.add_standard("name", "Name", "varchar", mandatory=True, at=at)
    pf.add_standard("first_name", "First name", "varchar", at=at)
    pf.add_standard("last_name", "Last name", "varchar", at=at)
    pf.add_standard("label_ids", "Labels", "set", options=["Customer", "Hot lead", "Cold lead"], at=at)
    pf.add_standard("org_id", "Organization", "org", at=at)
    pf.add_standard("owner_id", "Owner", "user", at=at)
    pf.add_standard("phone", "Phone", "phone", at=at)
    pf.add_standard("email", "Email", "varchar", at=at)
    pf.add_standard("visible_to", "Visible to", "visible_to", at=at)
    pf.add_standard("add_time", "Person created", "date", at=at)
    pf.add_standard("update_time", "Update time", "date", at=at)
    pf.add_standard(
        "marketing_status",
        "Marketing status",
        "enum",
        options=["No consent", "Unsubscribed", "Subscribed", "Archived"],
        at=at,
    )
    store.label_ids = tuple(int(o["id"]) for o in pf.by_key["label_ids"].options or ())
    df = store.deal_fields
    for key, name, ftype in (
        ("title", "Title", "varchar"),
        ("value", "Value", "monetary"),
        ("org_id", "Organization", "org"),
        ("person_id", "Contact person", "people"),
        ("owner_id", "Owner", "user"),
        ("expected_close_date", "Expected close date", "date"),
        ("visible_to", "Visible to", "visible_to"),
    ):
        df.add_standard(key, name, ftype, at=at)
    of = store.org_fields
    for key, name, ftype in (
        ("name", "Name", "varchar"),
        ("owner_id", "Owner", "user"),
        ("address", "Address", "address"),
        ("visible_to", "Visible to", "visible_to"),
    ):
        of.add_standard(key, name, ftype, at=at)


def seed_company(
    store: Store,
    *,
    persons: int,
    deals: int,
    seed: int = 0,
    now: int,
    campaigns: bool = True,
    subscriber_cap: int | None = None,
) -> dict[str, Any]:
    """Replace all data with a deterministic account; returns the ids of interesting examples."""
    rng = random.Random(seed)
    store.clear()
    setup_base(store, now)
    at = SEED_START
    pf = store.person_fields
    f_type = pf.add_custom(
        "Customer type", "enum", options=["Private person", "Company", "Government"], at=at
    )
    f_interests = pf.add_custom(
        "Interests", "set", options=["News", "Events", "Offers", "Product updates"], at=at
    )
    f_position = pf.add_custom("Position", "varchar", at=at)
    f_score = pf.add_custom("Lead score", "double", at=at)
    f_budget = pf.add_custom("Budget", "monetary", at=at)
    df = store.deal_fields
    d_source = df.add_custom(
        "Deal source", "enum", options=["Website", "Referral", "Trade fair", "Cold call"], at=at
    )
    d_months = df.add_custom("Contract length (months)", "double", at=at)
    type_opts = [o["id"] for o in f_type.options or ()]
    interest_opts = [o["id"] for o in f_interests.options or ()]
    source_opts = [o["id"] for o in d_source.options or ()]
    positions = ("CEO", "Head of Marketing", "Buyer", "Office manager", "Engineer", "Consultant")
    owners = [u for u in store.users]
    span = SEED_END - SEED_START

    # organizations
    n_orgs = max(3, persons // 15) if persons else 3
    orgs: list[Organization] = []
    for oid in range(1, n_orgs + 1):
        name = f"{rng.choice(ORG_A)} {rng.choice(ORG_B)} {rng.choice(ORG_C)}"
        if oid > 100:
            name = f"{name} {oid}"
        added = SEED_START + rng.randrange(span // 4)
        o = Organization(oid, name, rng.choice(owners), added)
        o.update_time = added + rng.randrange(span // 2)
        if rng.random() < 0.5:
            city, code = rng.choice(CITIES)
            street = f"Hauptstraße {rng.randint(1, 120)}"
            o.address = {
                "value": f"{street}, {code} {city}",
                "locality": city,
                "postal_code": code,
                "route": "Hauptstraße",
                "country": "Germany",
            }
        orgs.append(o)
    store.orgs.bulk_load(orgs)

    # persons
    rows: list[Person] = []
    statuses: dict[str, MarketingStatus] = {}
    subscribed = 0
    examples: dict[str, Any] = {
        "shared_email": None,
        "no_email": None,
        "several_emails": None,
        "invalid_email": None,
    }
    rand = rng.random
    label_ids = store.label_ids
    # Shared objects where values repeat: one name string per (first, last), one float per score...
    names: dict[tuple[str, str], tuple[str, str]] = {}
    org_ids = list(range(n_orgs + 1))
    scores = [float(i) for i in range(100)]
    budgets = [(i * 500, "EUR") for i in range(1, 100)]
    interest_sets = [(a,) for a in interest_opts] + [
        (a, b) for i, a in enumerate(interest_opts) for b in interest_opts[i + 1 :]
    ]
    n_first, n_last, n_dom, n_owners = len(FIRST), len(LAST), len(DOMAINS), len(owners)
    k_type, k_interests, k_position, k_score, k_budget = (
        f_type.key,
        f_interests.key,
        f_position.key,
        f_score.key,
        f_budget.key,
    )
    for pid in range(1, persons + 1):
        first, last = FIRST[int(rand() * n_first)], LAST[int(rand() * n_last)]
        added = SEED_START + int(rand() * span)
        named = names.get((first, last))
        if named is None:
            named = names[(first, last)] = (f"{first} {last}", f"{first}.{last}".lower().translate(ASCII))
        full, local = named
        p = Person(pid, full, owners[int(rand() * n_owners)], added)
        p.first_name, p.last_name = first, last
        p.update_time = added + int(rand() ** 3 * (SEED_END - added))
        if rand() < 0.7:
            p.org_id = org_ids[1 + int(rand() * n_orgs)]
        r = _FORCED_EMAIL_KIND.get(pid) or rand()
        domain = DOMAINS[int(rand() * n_dom)]
        if r < 0.05:
            examples["no_email"] = examples["no_email"] or pid
        elif r < 0.07 and rows:
            shared = rows[int(rand() * len(rows))].primary_email
            p._emails = shared or f"{local}{pid}@{domain}"
            if shared and is_valid_email(shared):
                examples["shared_email"] = examples["shared_email"] or shared
        elif r < 0.09:
            p._emails = ("n/a", "unknown", f"{local}@", "none")[int(rand() * 4)]
            examples["invalid_email"] = examples["invalid_email"] or pid
        elif r < 0.12:
            extra = f"{local}{pid}@{domain}"
            main = f"{local[:1]}.{local.partition('.')[2]}{pid}@{DOMAINS[int(rand() * n_dom)]}"
            emails: tuple[Email, ...] = (
                ((extra, False, HOME), (main, True, WORK))
                if rand() < 0.5
                else ((main, True, WORK), (extra, False, HOME))
            )
            if rand() < 0.3:
                emails = (*emails, (f"{local}.{pid}@{domain}", False, OTHER))
            p.emails = emails
            examples["several_emails"] = examples["several_emails"] or pid
        else:
            p._emails = f"{local}{pid}@{domain}"
        if rand() < 0.6:
            p._phones = f"+49 30 {1_000_000 + int(rand() * 8_999_999)}"
        if rand() < 0.1:
            p.label_ids = (label_ids[int(rand() * len(label_ids))],)
        custom: list[Any] = []
        if rand() < 0.4:
            custom += (k_type, type_opts[int(rand() * len(type_opts))])
        if rand() < 0.2:
            custom += (k_interests, interest_sets[int(rand() * len(interest_sets))])
        if rand() < 0.3:
            custom += (k_position, positions[int(rand() * len(positions))])
        if rand() < 0.25:
            custom += (k_score, scores[int(rand() * 100)])
        if rand() < 0.05:
            custom += (k_budget, budgets[int(rand() * len(budgets))])
        if custom:
            p._custom = tuple(custom)
        primary = p.primary_email
        if campaigns and primary and is_valid_email(primary):
            norm = norm_key(primary)
            if norm not in statuses:
                s = rand()
                if s < 0.35:
                    status = MarketingStatus.SUBSCRIBED
                    if subscriber_cap is not None and subscribed >= subscriber_cap:
                        status = MarketingStatus.NO_CONSENT
                elif s < 0.45:
                    status = MarketingStatus.UNSUBSCRIBED
                elif s < 0.48:
                    status = MarketingStatus.ARCHIVED
                elif s < 0.49:
                    status = MarketingStatus.BOUNCED
                else:
                    status = MarketingStatus.NO_CONSENT
                statuses[norm] = status
                subscribed += status in COUNTS_TOWARDS_CAP
        rows.append(p)
    store.persons.bulk_load(rows)
    for p in rows:
        store.index_emails(p)
    store.marketing.load(statuses)

    # deals
    randrange, choice = rng.randrange, rng.choice
    deal_rows: list[Deal] = []
    for did in range(1, deals + 1):
        person = rows[randrange(len(rows))] if rows and rand() < 0.85 else None
        added = SEED_START + randrange(span)
        d = Deal(did, "", choice(owners), added)
        d.update_time = added + int(rand() ** 2 * (SEED_END - added))
        d.stage_change_time = added + (d.update_time - added) // 2
        if person is not None:
            d.person_id, d.org_id = person.id, person.org_id
            d.owner_id = person.owner_id
        elif rand() < 0.5 and orgs:
            d.org_id = randrange(1, n_orgs + 1)
        who = person.name if person else (orgs[d.org_id - 1].name if d.org_id else "Walk-in")
        d.title = f"{who} — {choice(DEAL_WORDS)}"
        d.value = float(randrange(5, 500) * 100)
        d.currency = "EUR" if rand() < 0.9 else "USD"
        stage = randrange(1, 6)
        d.stage_id = stage
        d.probability = None
        s = rand()
        if s < 0.2:
            d.status, d.won_time = "won", d.update_time
            d.close_time = d.won_time
        elif s < 0.35:
            d.status, d.lost_time, d.lost_reason = "lost", d.update_time, choice(LOST_REASONS)
            d.close_time = d.lost_time
        if rand() < 0.3:
            d.expected_close_date = v1_time(added + 86400 * randrange(10, 120))[:10]
        if rand() < 0.5:
            d.custom = {d_source.key: choice(source_opts), d_months.key: float(choice((1, 6, 12, 24)))}
        t = rand()
        if t < 0.05:
            d.is_deleted = True
        elif t < 0.10:
            d.is_archived = True
            d.archive_time = d.update_time
        deal_rows.append(d)
    # make sure every status and flag appears at least once, whatever the dice said
    if len(deal_rows) >= 5:
        for d, (deal_status, deleted, archived) in zip(
            deal_rows[:5],
            (
                ("open", False, False),
                ("won", False, False),
                ("lost", False, False),
                ("open", True, False),
                ("won", False, True),
            ),
            strict=True,
        ):
            d.status, d.is_deleted, d.is_archived = deal_status, deleted, archived
            d.won_time = d.update_time if deal_status == "won" else None
            d.lost_time = d.update_time if deal_status == "lost" else None
            d.lost_reason = LOST_REASONS[0] if deal_status == "lost" else None
            d.close_time = d.won_time or d.lost_time
            d.archive_time = d.update_time if archived else None
        deal_rows[0].person_id = None
    store.deals.bulk_load(deal_rows)
    examples["counts"] = {
        "persons": persons,
        "deals": deals,
        "organizations": n_orgs,
        "users": len(store.users),
    }
    return examples
