"""What the consent decision sees: one email's view of each system, and what pmsync remembers.

Everything here is about ONE email address (normalized, see ``status.normalize_email``). The status
belongs to the primary email, so a person belongs to the view of its *primary* email; persons that
merely carry the address as a secondary email may be listed (``is_primary=False``) but are never
changed on its behalf.

All times are timezone-aware (``AwareDatetime``): a naive time cannot be ordered against Maileon's
and Pipedrive's timestamps safely, so it is rejected at the boundary.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pmsync.rules.newsletter import Newsletter
from pmsync.rules.status import MarketingStatus, is_valid_email, normalize_email


class Permission(IntEnum):
    """Maileon permission codes (apis.md §9)."""

    NONE = 1
    SOI = 2  # single opt-in
    COI = 3  # confirmed opt-in
    DOI = 4  # double opt-in
    DOI_PLUS = 5  # double opt-in plus (tracking allowed)
    OTHER = 6


#: Permissions that only a confirmed double opt-in gives.
CONFIRMED_PERMISSIONS: frozenset[Permission] = frozenset({Permission.DOI, Permission.DOI_PLUS})


class ConsentPhase(StrEnum):
    """Where one email stands, as pmsync understands it (kept in :class:`LastState`).

    - ``none``       – nothing known: no request, no opt-out, no confirmation.
    - ``requested``  – an explicit request newer than every opt-out, no DOI started by pmsync yet
      (intake with ``consent=true, double_opt_in=false``, or a request held back, e.g. bounced).
    - ``pending``    – pmsync started a DOI for a request newer than every opt-out.
    - ``subscribed`` – a DOI confirmation that counts (see ``consent.decide``).
    - ``opted_out``  – the latest thing that happened is an opt-out.
    """

    NONE = "none"
    REQUESTED = "requested"
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    OPTED_OUT = "opted_out"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PersonView(_Model):
    """One Pipedrive person carrying the email."""

    person_id: int
    newsletter: Newsletter | None = None
    #: ``None`` where the account has no Campaigns (the field is not readable then).
    marketing_status: MarketingStatus | None = None
    #: Whether the email is this person's primary email (only then does its status belong to it).
    is_primary: bool = True
    update_time: AwareDatetime | None = None
    #: Fingerprint of the Maileon contact data mapped from this person (``mapping.fingerprint``);
    #: a change starts a field update. ``None``: not computed, no field sync.
    fields_hash: str | None = None


class PipedriveView(_Model):
    """Pipedrive's side of one email: every person sharing it, and whether Campaigns is on."""

    email: str | None
    persons: tuple[PersonView, ...] = ()
    campaigns_enabled: bool = False
    #: When the persons were read. Pipedrive-side opt-outs seen only as a state are dated no later
    #: than this; requests seen as a *changed* value are dated just after the previous read.
    fetched_at: AwareDatetime | None = None

    @property
    def normalized_email(self) -> str | None:
        return normalize_email(self.email) if self.email is not None else None

    @property
    def has_valid_email(self) -> bool:
        return is_valid_email(self.normalized_email)

    @property
    def members(self) -> tuple[PersonView, ...]:
        """Persons whose primary email this is: the ones treated together, in person-id order."""
        return tuple(sorted((p for p in self.persons if p.is_primary), key=lambda p: p.person_id))

    @property
    def representative(self) -> PersonView | None:
        """The member whose data Maileon gets: the most recently updated, then the lowest id."""
        members = self.members
        if not members:
            return None
        return min(
            members,
            key=lambda p: (-(p.update_time.timestamp()) if p.update_time else float("inf"), p.person_id),
        )


class MaileonView(_Model):
    """Maileon's side of one email.

    ``contact_exists`` means a live (not anonymized) contact. ``unsubscribed`` means the email's
    latest Maileon state is an unsubscription (contact anonymized, email in the unsubscription report)
    with no live contact created since; the two are therefore exclusive. ``last_unsubscribe_at`` may
    be set for a live contact too (history: an older unsubscription of a former contact).
    """

    contact_exists: bool = False
    permission: Permission | None = None
    unsubscribed: bool = False
    doi_pending: bool = False
    last_doi_confirmed_at: AwareDatetime | None = None
    last_unsubscribe_at: AwareDatetime | None = None
    #: Every unsubscription row known for the email (report since the watermark, webhooks). Lets
    #: pmsync tell its own unsubscribe from a person's when both fall close together; optional
    #: (``last_unsubscribe_at`` alone is used when empty).
    unsubscribe_times: tuple[AwareDatetime, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> MaileonView:
        if self.contact_exists != (self.permission is not None):
            raise ValueError("a live contact has a permission, and only a live contact has one")
        if self.unsubscribed and self.contact_exists:
            raise ValueError("an unsubscribed (anonymized) contact is not live")
        if self.doi_pending and not self.contact_exists:
            raise ValueError("a pending DOI needs a live contact")
        return self

    @property
    def confirmed(self) -> bool:
        return self.permission in CONFIRMED_PERMISSIONS


class KnownPerson(_Model):
    """What pmsync last saw (or wrote) for one member."""

    newsletter: Newsletter | None = None
    marketing_status: MarketingStatus | None = None
    #: While ``newsletter`` is ``Subscribe`` (a request pmsync could not act on yet): its date.
    subscribe_at: AwareDatetime | None = None
    #: pmsync's own latest writes to this person (to recognise their webhook echoes).
    written_newsletter: Newsletter | None = None
    written_marketing_status: MarketingStatus | None = None
    written_at: AwareDatetime | None = None
    #: The person's ``update_time`` Pipedrive returned for pmsync's latest write (later ones are
    #: someone else's changes).
    written_update_time: AwareDatetime | None = None


class LastState(_Model):
    """What pmsync remembers about one email between decisions (stored per email).

    ``consent.decide`` returns the next value; the caller stores it once every action succeeded
    (after folding in marketing_status read-backs with ``consent.record_marketing_status_readback``).
    An empty ``LastState()`` means "never seen" and is safe: the first decision is a reconcile.
    """

    phase: ConsentPhase = ConsentPhase.NONE
    #: The time (lower bound for requests/confirmations, upper bound for opt-outs) of the event that
    #: started the current phase. An opt-out not newer than this does not end a request/DOI/subscription.
    phase_since: AwareDatetime | None = None
    #: Latest explicit subscribe request accepted (Newsletter=Subscribe or intake consent=true).
    newsletter_request_at: AwareDatetime | None = None
    #: Latest opt-out known on either side.
    last_unsubscribe_at: AwareDatetime | None = None
    #: Latest DOI confirmation known.
    last_doi_confirmed_at: AwareDatetime | None = None
    #: When pmsync last started a DOI (created the contact with doi=true).
    doi_started_at: AwareDatetime | None = None
    #: When pmsync sent unsubscribes to Maileon whose unsubscription row it has not seen yet: each
    #: send's echo is the first new row at or after it (within ``consent.MAILEON_ECHO_WINDOW``).
    maileon_unsubscribes_sent: tuple[AwareDatetime, ...] = ()
    #: Maileon unsubscription rows up to this time are accounted for (a person's or pmsync's echo).
    maileon_unsubscriptions_seen_until: AwareDatetime | None = None
    last_known_permission: Permission | None = None
    #: The email's marketing_status as last seen or written (``None`` if members disagree / unknown).
    last_known_marketing_status: MarketingStatus | None = None
    #: Whether Maileon holds the email as unsubscribed (seen, or pmsync unsubscribed it).
    maileon_opted_out: bool = False
    #: A marketing_status pmsync asked for and Pipedrive refused (or parked as pending_upgrade);
    #: not asked again while nothing changes.
    marketing_status_refused: MarketingStatus | None = None
    #: The members at the last decision, with their values then.
    persons: dict[int, KnownPerson] = Field(default_factory=dict)
    fields_hash: str | None = None
    observed_at: AwareDatetime | None = None
