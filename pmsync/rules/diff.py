"""Drift between Pipedrive and Maileon, as data: compact frames in, drift classes out (pure, pandas).

Reconcile reads both systems page by page and keeps only compact columns per person and per contact
(ints, small codes, 64-bit hashes; the email as the join key's source). :func:`classify` joins them
on the email and sorts every email into the drift classes below. It *classifies*; it never decides a
consent action: emails with consent drift go to the one decision function (``consent.decide``, via
the settle task), field drift goes to a bulk field sync, everything else is reported for review.

Drift classes (``DriftClass``), first matching consent rule wins per email:

================================ ======================================================= ==========
class                            detected when                                          repair
================================ ======================================================= ==========
consent_mismatch                 a) opted out in Pipedrive (Newsletter=Unsubscribed or  settle
                                    marketing_status=unsubscribed), contact live in
                                    Maileon
                                 b) unsubscribed in Maileon (report, no live contact),  settle
                                    a member's Newsletter is not Unsubscribed (or its
                                    marketing_status is subscribed)
                                 d) DOI confirmed in Maileon (4/5), a member's          settle
                                    Newsletter is not Subscribed
                                 e) Newsletter=Subscribe while an unconfirmed contact   settle
                                    exists
                                 f) Newsletter=Subscribed, contact live but never       report
                                    confirmed (the rules would only record it)
                                 g) persons sharing the email show different Newsletter settle
                                    values (one opted out or subscribed, a twin not, e.g.
                                    a twin whose webhook was lost)
                                 h) opted out in Pipedrive by marketing_status, no live  settle
                                    contact, Newsletter not Unsubscribed (its webhook
                                    was lost)
                                 i) opted out in Pipedrive, Campaigns on, a member's     settle
                                    marketing_status not unsubscribed (e.g. an email
                                    changed to a new address after the opt-out)
missing_in_maileon               c) Newsletter asks for or claims a subscription        settle
                                    (Subscribe / Pending DOI / Subscribed), no live
                                    contact, not opted out
stale_fields                     live contact of a Pipedrive email, not opted out, not  bulk sync
                                 settled: its fields differ from what every member
                                 maps to
orphan_contact                   contact created by pmsync (createdByPipedrive, or      report
                                 external id ``pd:<company>:<person>``) whose email no
                                 Pipedrive person has (person deleted, or its email
                                 changed)
doi_pending_too_long             pmsync contact still at permission 1 (DOI pending)     report
                                 longer than the limit
duplicate_email                  several persons share a primary email                  report
no_valid_email                   a person without a (valid) primary email               report
================================ ======================================================= ==========

Field fingerprints: each field pmsync sends (external id, FIRSTNAME, LASTNAME, FULLNAME,
ORGANIZATION and the custom fields) is hashed on its own (:func:`field_hashes`); a person's expected
digest is the XOR of the hashes of the fields its mapped contact carries, with a bit mask saying which
ones. The Maileon side is combined under the *person's* mask, so a value Maileon still holds for a
field Pipedrive left empty is not drift: pmsync never clears a field (``mapping`` omits empty values),
so flagging it would repeat forever. Hashes are 64-bit; two different values colliding is negligible
at 10^6 contacts (~10^-7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus

#: Codes of the compact int8 columns (-1 = empty / unknown).
NONE = -1
NEWSLETTER_CODES: dict[Newsletter, int] = {option: i for i, option in enumerate(Newsletter)}
STATUS_CODES: dict[MarketingStatus, int] = {status: i for i, status in enumerate(MarketingStatus)}
_NL = {option.value: code for option, code in NEWSLETTER_CODES.items()}
_MS = {status.value: code for status, code in STATUS_CODES.items()}

#: Standard Maileon fields pmsync writes (``mapping.map_person``).
MAILEON_STANDARD_FIELDS: tuple[str, ...] = ("FIRSTNAME", "LASTNAME", "FULLNAME", "ORGANIZATION")
EXTERNAL_ID = "external_id"
MAX_FIELDS = 16  # the mask is a uint16

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")  # = status.is_valid_email, vectorised
_SALT = "pmsync-email-key"  # 16 characters: pandas' siphash key


class DriftClass(StrEnum):
    MISSING_IN_MAILEON = "missing_in_maileon"
    STALE_FIELDS = "stale_fields"
    CONSENT_MISMATCH = "consent_mismatch"
    ORPHAN_CONTACT = "orphan_contact"
    DOI_PENDING_TOO_LONG = "doi_pending_too_long"
    DUPLICATE_EMAIL = "duplicate_email"
    NO_VALID_EMAIL = "no_valid_email"


#: How each class is repaired: the settle task (consent rules), the bulk field sync, or not at all.
REPAIR: dict[DriftClass, str] = {
    DriftClass.MISSING_IN_MAILEON: "consent rules",
    DriftClass.CONSENT_MISMATCH: "consent rules (review: unbacked Subscribed)",
    DriftClass.STALE_FIELDS: "bulk field sync",
    DriftClass.ORPHAN_CONTACT: "review",
    DriftClass.DOI_PENDING_TOO_LONG: "review",
    DriftClass.DUPLICATE_EMAIL: "review",
    DriftClass.NO_VALID_EMAIL: "review",
}


class Reason(StrEnum):
    OPTOUT_IN_PIPEDRIVE = "opted out in Pipedrive, contact live in Maileon"
    OPTOUT_IN_MAILEON = "unsubscribed in Maileon, not in Pipedrive"
    CONFIRMED_IN_MAILEON = "DOI confirmed in Maileon, Pipedrive not Subscribed"
    REQUEST_NOT_ACTED_ON = "Subscribe not acted on (unconfirmed contact exists)"
    UNBACKED_SUBSCRIBED = "Newsletter=Subscribed, Maileon contact never confirmed"
    MEMBERS_DISAGREE = "persons sharing the email show different Newsletter values"
    OPTOUT_NOT_SHOWN = "opted out in Pipedrive, Newsletter not Unsubscribed"
    OPTOUT_NOT_IN_CAMPAIGNS = "opted out in Pipedrive, marketing_status not unsubscribed"
    REQUEST_NOT_SENT = "Subscribe not sent to Maileon"
    REQUEST_AFTER_UNSUBSCRIBE = "Subscribe after an unsubscription in Maileon"
    CLAIM_WITHOUT_CONTACT = "Newsletter claims a subscription, no Maileon contact"
    FIELDS_DIFFER = "contact fields differ from the person's"
    PERSON_DELETED = "person deleted in Pipedrive"
    PERSON_EMAIL_CHANGED = "person's primary email changed"
    NO_PERSON_LINK = "no Pipedrive person for this email"
    PENDING = "DOI pending"
    SHARED = "persons share the primary email"
    NO_EMAIL = "no email"
    INVALID_EMAIL = "invalid email"


#: Reasons that go to the consent rules (settle); every other consent reason is report-only.
SETTLE_REASONS: frozenset[Reason] = frozenset({
    Reason.OPTOUT_IN_PIPEDRIVE, Reason.OPTOUT_IN_MAILEON, Reason.CONFIRMED_IN_MAILEON,
    Reason.REQUEST_NOT_ACTED_ON, Reason.REQUEST_NOT_SENT, Reason.REQUEST_AFTER_UNSUBSCRIBE,
    Reason.CLAIM_WITHOUT_CONTACT, Reason.MEMBERS_DISAGREE, Reason.OPTOUT_NOT_SHOWN, Reason.OPTOUT_NOT_IN_CAMPAIGNS,
})


# --------------------------------------------------------------------------------------------------
# Compact columns
# --------------------------------------------------------------------------------------------------

PERSON_COLUMNS: dict[str, str] = {
    "person_id": "int64",
    "email": "object",
    "newsletter": "int8",
    "marketing_status": "int8",
    "exp": "uint64",
    "mask": "uint16",
}
CONTACT_COLUMNS: dict[str, str] = {
    "contact_id": "int64",
    "email": "object",
    "permission": "int8",
    "ext_person": "int64",
    "by_pmsync": "bool",
    "pending_since": "float64",
}
UNSUBSCRIPTION_COLUMNS: dict[str, str] = {"email": "object", "at_ms": "int64"}


def newsletter_code(label: str | None) -> int:
    return _NL.get(label, NONE) if label is not None else NONE


def status_code(value: str | None) -> int:
    return _MS.get(value, NONE) if value is not None else NONE


def newsletter_label(code: int) -> str | None:
    return next((o.value for o, c in NEWSLETTER_CODES.items() if c == code), None)


def empty_persons() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in PERSON_COLUMNS.items()})


def empty_contacts(fields: int) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in CONTACT_COLUMNS.items()})
    for i in range(fields):
        frame[f"h{i}"] = pd.Series(dtype="uint64")
    return frame


def empty_unsubscriptions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in UNSUBSCRIPTION_COLUMNS.items()})


def persons_frame(rows: Mapping[str, Any]) -> pd.DataFrame:
    """Build a persons frame with the compact dtypes from column lists."""
    return pd.DataFrame({c: np.asarray(rows[c], dtype=t) for c, t in PERSON_COLUMNS.items()})


def contacts_frame(rows: Mapping[str, Any], hashes: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({c: np.asarray(rows[c], dtype=t) for c, t in CONTACT_COLUMNS.items()})
    for i in range(hashes.shape[1]):
        frame[f"h{i}"] = hashes[:, i]
    return frame


# --------------------------------------------------------------------------------------------------
# Field fingerprints
# --------------------------------------------------------------------------------------------------


def digest_fields(custom_field_types: Mapping[str, str]) -> tuple[str, ...]:
    """The fields compared between a person's mapped contact and the Maileon contact, in mask order."""
    names = (EXTERNAL_ID, *MAILEON_STANDARD_FIELDS, *sorted(custom_field_types))
    if len(names) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields can be compared, got {len(names)}")
    return names


def normalize_value(value: Any, maileon_type: str | None = None) -> str | None:
    """A field value as comparable text (both sides go through this): None for empty; booleans as
    ``true``/``false``; numbers and dates in one canonical form per Maileon type."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, date | datetime):
        text = value.isoformat()
    else:
        text = str(value).strip()
    if not text:
        return None
    try:
        if maileon_type == "boolean":
            return "true" if text.lower() in ("true", "1") else "false"
        if maileon_type == "float":
            return repr(float(text))
        if maileon_type == "integer":
            return str(int(float(text)))
    except ValueError:
        return text
    if maileon_type == "date":
        return text[:10]
    return text


def field_texts(
    fields: Sequence[str],
    types: Mapping[str, str],
    external_id: str | None,
    standard: Mapping[str, Any],
    custom: Mapping[str, Any],
) -> list[str | None]:
    """One contact's compared values in ``fields`` order (a mapped contact or a Maileon listing row)."""
    out: list[str | None] = []
    for name in fields:
        if name == EXTERNAL_ID:
            out.append(normalize_value(external_id))
        elif name in MAILEON_STANDARD_FIELDS:
            out.append(normalize_value(standard.get(name)))
        else:
            out.append(normalize_value(custom.get(name), types.get(name)))
    return out


def fingerprints(rows: Sequence[Sequence[str | None]], fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(digest, mask, per-field hashes) of contacts given as :func:`field_texts` rows."""
    columns = [[row[i] for row in rows] for i in range(fields)]
    hashes, mask = field_hashes(columns) if rows else (np.zeros((0, fields), np.uint64), np.zeros(0, np.uint16))
    return combine(hashes, mask), mask, hashes


def field_hashes(columns: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-field 64-bit hashes (n × fields, uint64) and the mask of fields that have a value.

    ``columns[i]`` holds field i's normalized text for every row (None = no value). Each field is
    hashed with its own key, so equal values in two fields do not cancel when combined.
    """
    n = len(columns[0]) if columns else 0
    hashes = np.zeros((n, len(columns)), dtype=np.uint64)
    mask = np.zeros(n, dtype=np.uint16)
    for i, values in enumerate(columns):
        present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
        if not present.any():
            continue
        text = np.asarray([v if v is not None else "" for v in values], dtype=object)
        hashes[:, i] = np.where(present, pd.util.hash_array(text, hash_key=f"pmsync-field-{i:03d}"), 0)
        mask |= present.astype(np.uint16) << np.uint16(i)
    return hashes, mask


def combine(hashes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """XOR of each row's field hashes selected by its mask (one uint64 per row)."""
    out = np.zeros(len(mask), dtype=np.uint64)
    for i in range(hashes.shape[1]):
        bit = ((mask >> np.uint16(i)) & np.uint16(1)).astype(bool)
        out ^= np.where(bit, hashes[:, i], np.uint64(0))
    return out


def text_hashes(values: Sequence[str]) -> np.ndarray:
    """64-bit hashes of texts (e.g. a person's raw mapping inputs), as uint64."""
    return pd.util.hash_array(np.asarray(values, dtype=object), hash_key="pmsync-raw-input")


def email_keys(emails: pd.Series) -> np.ndarray:
    """The join key of an email column: a 64-bit hash (0 for None)."""
    values = emails.to_numpy(dtype=object)
    present = pd.notna(values)
    keys = np.zeros(len(values), dtype=np.uint64)
    if present.any():
        keys[present] = pd.util.hash_array(values[present], hash_key=_SALT)
    return keys


def valid_emails(emails: pd.Series) -> np.ndarray:
    text = emails.astype(object).where(emails.notna(), "")
    return text.str.match(_EMAIL).fillna(False).to_numpy(dtype=bool)


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


@dataclass
class Drift:
    """The drift of one reconcile. Class frames have ``email``, ``reason`` and ``key`` (persons' side)
    or ``ext_person`` (Maileon's side); person ids are looked up on demand (:meth:`person_ids`,
    :meth:`with_person_ids`) so that even a mass drift holds no Python list per email."""

    classes: dict[DriftClass, pd.DataFrame]
    #: Emails for the consent rules: ``email``, ``key``, ``permission`` (-1: no live contact),
    #: ``unsubscribed_at_ms`` (-1: none; set only without a live contact), ``reason``.
    settle: pd.DataFrame
    #: Emails whose live contact gets a bulk field update: ``email``, ``key``.
    stale: pd.DataFrame
    #: Distinct valid emails across both systems (the brake's denominator).
    population: int
    #: Live contacts of Pipedrive emails whose fields could not be compared (no digest known yet).
    unverified: int = 0
    persons: int = 0
    contacts: int = 0
    #: Persons with a valid email, sorted by (email key, person id): the person-id index.
    member_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    member_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def planned(self) -> int:
        """Changes the repair would attempt: emails for the consent rules plus field updates."""
        return len(self.settle) + len(self.stale)

    def person_ids(self, keys: Sequence[int] | np.ndarray) -> list[list[int]]:
        """The persons whose primary email has each key (sorted ids)."""
        keys = np.asarray(keys, dtype=np.uint64)
        lo = np.searchsorted(self.member_keys, keys, side="left")
        hi = np.searchsorted(self.member_keys, keys, side="right")
        return [self.member_ids[a:b].tolist() for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]

    def with_person_ids(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with a ``person_ids`` column (for small frames: batches, samples, tests)."""
        out = frame.copy()
        if "key" in frame.columns:
            out["person_ids"] = pd.Series(self.person_ids(frame["key"].to_numpy()), index=frame.index, dtype=object)
        elif "ext_person" in frame.columns:
            out["person_ids"] = pd.Series([[int(x)] if x >= 0 else [] for x in frame["ext_person"]],
                                          index=frame.index, dtype=object)
        return out

    def counts(self) -> dict[str, int]:
        return {c.value: len(self.classes.get(c, ())) for c in DriftClass}

    def reasons(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for cls, frame in self.classes.items():
            if len(frame):
                out[cls.value] = {str(k): int(v) for k, v in frame["reason"].value_counts().sort_index().items()}
        return out

    def samples(self, n: int = 5) -> dict[str, list[tuple[str | None, list[int], str]]]:
        """Up to ``n`` (email, person ids, reason) per class, emails in order (deterministic)."""
        out: dict[str, list[tuple[str | None, list[int], str]]] = {}
        for cls, frame in self.classes.items():
            if len(frame):
                head = self.with_person_ids(frame.sort_values("email", na_position="last").head(n))
                out[cls.value] = [
                    (e if isinstance(e, str) else None, [int(i) for i in ids], str(r))
                    for e, ids, r in zip(head["email"], head["person_ids"], head["reason"], strict=True)
                ]
        return out


def brake(planned: int, population: int, threshold: float) -> bool:
    """True when the planned changes are too many to apply unreviewed: ``planned / population`` is
    not below ``threshold``. Nothing planned never brakes."""
    return planned > 0 and planned / max(population, 1) >= threshold


class _Lookup:
    """Positions of uint64 keys in a key array (sorted copy + searchsorted; -1 where absent)."""

    def __init__(self, keys: np.ndarray, positions: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.positions = keys[order], positions[order]

    def __call__(self, wanted: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.full(len(wanted), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return np.where(self.keys[i] == wanted, self.positions[i], -1)


def _group_any(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(flags.astype(np.uint8), starts).astype(bool) if len(starts) else flags[:0]


def _group_all(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.minimum.reduceat(flags.astype(np.uint8), starts).astype(bool) if len(starts) else flags[:0]


def classify(
    persons: pd.DataFrame,
    contacts: pd.DataFrame,
    unsubscriptions: pd.DataFrame,
    *,
    campaigns_enabled: bool,
    now_s: float,
    doi_pending_max_s: float,
) -> Drift:
    """Sort every email into the drift classes (see the module docstring). Array-based: memory stays
    a few columns per person and contact even when most of them drift."""
    if persons["person_id"].duplicated().any():
        persons = persons.drop_duplicates("person_id", keep="last")
    valid = valid_emails(persons["email"])
    classes: dict[DriftClass, pd.DataFrame] = {}

    # -- persons without a valid email ------------------------------------------------------------
    bad = persons.loc[~valid, ["person_id", "email"]]
    classes[DriftClass.NO_VALID_EMAIL] = pd.DataFrame({
        "email": pd.Series([e if isinstance(e, str) else None for e in bad["email"]], dtype=object),
        "ext_person": bad["person_id"].to_numpy(dtype=np.int64),
        "reason": np.where(bad["email"].isna(), Reason.NO_EMAIL.value, Reason.INVALID_EMAIL.value).astype(object),
    })

    # -- Pipedrive, per email: members sorted by (key, id), aggregates per run of equal keys -------
    pid = persons["person_id"].to_numpy(dtype=np.int64)[valid]
    email = persons["email"].to_numpy(dtype=object)[valid]
    key = email_keys(pd.Series(email, dtype=object))
    order = np.lexsort((pid, key))
    key, pid, email = key[order], pid[order], email[order]
    nl = persons["newsletter"].to_numpy()[valid][order]
    ms = persons["marketing_status"].to_numpy()[valid][order]
    exp = persons["exp"].to_numpy(dtype=np.uint64)[valid][order]
    fmask = persons["mask"].to_numpy(dtype=np.uint16)[valid][order]
    del order
    keys, starts, members = np.unique(key, return_index=True, return_counts=True)
    emails = email[starts]
    del email
    unsub_nl, unsub_st = NEWSLETTER_CODES[Newsletter.UNSUBSCRIBED], STATUS_CODES[MarketingStatus.UNSUBSCRIBED]
    optout = _group_any((nl == unsub_nl) | (campaigns_enabled & (ms == unsub_st)), starts)
    request = _group_any(nl == NEWSLETTER_CODES[Newsletter.SUBSCRIBE], starts)
    subscribed_row = nl == NEWSLETTER_CODES[Newsletter.SUBSCRIBED]
    claim = _group_any(subscribed_row | (nl == NEWSLETTER_CODES[Newsletter.PENDING_DOI]), starts)
    any_subscribed, all_subscribed = _group_any(subscribed_row, starts), _group_all(subscribed_row, starts)
    not_unsubscribed = _group_any(
        (nl != unsub_nl) | (campaigns_enabled & (ms == STATUS_CODES[MarketingStatus.SUBSCRIBED])), starts)
    newsletter_not_unsubscribed = _group_any(nl != unsub_nl, starts)
    # bounced is read-only; every other status can (and after an opt-out must) become unsubscribed
    status_not_unsubscribed = campaigns_enabled & _group_any(
        (ms != unsub_st) & (ms != STATUS_CODES[MarketingStatus.BOUNCED]) & (ms != NONE), starts)
    # The rules treat the persons of one email together, so members that disagree are drift.
    members_disagree = (np.maximum.reduceat(nl, starts) != np.minimum.reduceat(nl, starts)
                        if len(starts) else np.zeros(0, dtype=bool))
    del nl, ms, subscribed_row

    # -- Maileon, per email -----------------------------------------------------------------------
    ckey = email_keys(contacts["email"])
    usable = (ckey != 0) & ~pd.Series(ckey).duplicated(keep="last").to_numpy()
    contact_at = _Lookup(ckey[usable], np.flatnonzero(usable))
    cpos = contact_at(keys)                         # per email: its contact's row, -1 = no live contact
    live = cpos >= 0
    c_permission = contacts["permission"].to_numpy(dtype=np.int8)
    permission = np.where(live, c_permission[np.maximum(cpos, 0)] if len(c_permission) else -1, -1).astype(np.int8)
    confirmed = live & np.isin(permission, (4, 5))
    ukey = email_keys(unsubscriptions["email"])
    u_at = unsubscriptions["at_ms"].to_numpy(dtype=np.int64)
    uorder = np.lexsort((u_at, ukey))  # per key, the latest last
    last_of_key = np.r_[ukey[uorder][1:] != ukey[uorder][:-1], True] if len(ukey) else np.zeros(0, bool)
    unsub_keys, unsub_ms = ukey[uorder][last_of_key], u_at[uorder][last_of_key]
    upos = _Lookup(unsub_keys[unsub_keys != 0], np.flatnonzero(unsub_keys != 0))(keys)
    unsub = (upos >= 0) & ~live

    reason = np.full(len(keys), "", dtype=object)

    def mark(cond: np.ndarray, why: Reason) -> None:
        reason[(reason == "") & cond] = why.value

    mark(optout & live, Reason.OPTOUT_IN_PIPEDRIVE)
    mark(unsub & ~request & not_unsubscribed, Reason.OPTOUT_IN_MAILEON)
    mark(~live & ~optout & request & unsub, Reason.REQUEST_AFTER_UNSUBSCRIBE)
    mark(~live & ~optout & request, Reason.REQUEST_NOT_SENT)
    mark(~live & ~optout & ~unsub & claim, Reason.CLAIM_WITHOUT_CONTACT)
    mark(confirmed & ~optout & ~all_subscribed, Reason.CONFIRMED_IN_MAILEON)
    mark(live & ~confirmed & ~optout & request, Reason.REQUEST_NOT_ACTED_ON)
    mark(live & ~confirmed & ~optout & any_subscribed, Reason.UNBACKED_SUBSCRIBED)
    mark(members_disagree, Reason.MEMBERS_DISAGREE)
    mark(optout & newsletter_not_unsubscribed, Reason.OPTOUT_NOT_SHOWN)
    mark(optout & status_not_unsubscribed, Reason.OPTOUT_NOT_IN_CAMPAIGNS)

    is_missing = np.isin(reason, [Reason.REQUEST_NOT_SENT.value, Reason.REQUEST_AFTER_UNSUBSCRIBE.value,
                                  Reason.CLAIM_WITHOUT_CONTACT.value])
    is_consent = (reason != "") & ~is_missing
    to_settle = np.isin(reason, [r.value for r in SETTLE_REASONS])

    # -- field drift: each member's expected digest against its email's contact, under its mask ----
    member_email = np.repeat(np.arange(len(keys)), members)
    eligible = live & ~optout & ~to_settle
    rows = eligible[member_email]
    known = rows & (fmask > 0)
    digest = np.zeros(len(key), dtype=np.uint64)
    if known.any():
        at = cpos[member_email[known]]
        for i in range(MAX_FIELDS):
            column = f"h{i}"
            if column not in contacts.columns:
                break
            bit = ((fmask[known] >> np.uint16(i)) & np.uint16(1)).astype(bool)
            digest[known] ^= np.where(bit, contacts[column].to_numpy(dtype=np.uint64)[at], np.uint64(0))
    match = known & (digest == exp)
    del digest
    any_known, any_match = _group_any(known, starts), _group_any(match, starts)
    stale = eligible & any_known & ~any_match
    unverified = int((eligible & ~any_known).sum())

    def frame(sel: np.ndarray, why: np.ndarray | str) -> pd.DataFrame:
        return pd.DataFrame({
            "email": emails[sel],
            "key": keys[sel],
            "reason": why[sel] if isinstance(why, np.ndarray) else np.full(int(sel.sum()), why, dtype=object),
        })

    classes[DriftClass.MISSING_IN_MAILEON] = frame(is_missing, reason)
    classes[DriftClass.CONSENT_MISMATCH] = frame(is_consent, reason)
    classes[DriftClass.STALE_FIELDS] = frame(stale, Reason.FIELDS_DIFFER.value)
    classes[DriftClass.DUPLICATE_EMAIL] = frame(members >= 2, Reason.SHARED.value)
    settle = frame(to_settle, reason)
    settle["permission"] = permission[to_settle]
    settle["unsubscribed_at_ms"] = np.where(unsub[to_settle], unsub_ms[np.maximum(upos[to_settle], 0)]
                                            if len(unsub_ms) else -1, -1).astype(np.int64)
    stale_frame = frame(stale, Reason.FIELDS_DIFFER.value)[["email", "key"]]

    # -- Maileon-side classes ----------------------------------------------------------------------
    has_members = np.zeros(len(contacts), dtype=bool)
    has_members[cpos[live]] = True
    by_pmsync = contacts["by_pmsync"].to_numpy(dtype=bool) & usable
    ext = contacts["ext_person"].to_numpy(dtype=np.int64)
    c_email = contacts["email"].to_numpy(dtype=object)
    orphan = by_pmsync & ~has_members
    known_person = np.isin(ext[orphan], persons["person_id"].to_numpy(dtype=np.int64))
    orphan_reason = np.where(ext[orphan] < 0, Reason.NO_PERSON_LINK.value,
                             np.where(known_person, Reason.PERSON_EMAIL_CHANGED.value, Reason.PERSON_DELETED.value))
    classes[DriftClass.ORPHAN_CONTACT] = pd.DataFrame({
        "email": c_email[orphan], "ext_person": ext[orphan], "reason": orphan_reason.astype(object)})
    since = contacts["pending_since"].to_numpy(dtype=np.float64)
    pending = by_pmsync & (c_permission == 1) & ~np.isnan(since) & (now_s - since > doi_pending_max_s)
    days = np.floor((now_s - since[pending]) / 86400).astype(int)
    classes[DriftClass.DOI_PENDING_TOO_LONG] = pd.DataFrame({
        "email": c_email[pending], "ext_person": ext[pending],
        "reason": np.asarray([f"{Reason.PENDING.value} for {d} days" for d in days], dtype=object),
    })

    population = len(keys) + int((usable & ~has_members).sum())
    ordered = {cls: classes[cls] for cls in DriftClass}
    return Drift(classes=ordered, settle=settle, stale=stale_frame, population=population, unverified=unverified,
                 persons=len(persons), contacts=int(usable.sum()), member_keys=key, member_ids=pid)
