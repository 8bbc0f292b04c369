"""The Pipedrive person field **Newsletter**: the salesperson's handle on consent.

``pmsync setup`` creates an enum person field named :data:`NEWSLETTER_FIELD_NAME` with exactly the
options of :class:`Newsletter`, in this order. A salesperson sets ``Subscribe``; pmsync moves it on:

- ``Subscribe``    – an explicit request. pmsync starts a Maileon DOI and sets ``Pending DOI``.
- ``Pending DOI``  – pmsync created the Maileon contact with DOI; waiting for the person to confirm.
- ``Subscribed``   – the person confirmed the DOI in Maileon (permission 4/5).
- ``Unsubscribed`` – an opt-out, made in Maileon, in Pipedrive (this field or ``marketing_status``),
  or through intake. It beats every older request.

Pipedrive stores an enum value as an option *id*; connectors turn ids into these labels (and back)
with the field's option list, so rules only ever see labels.
"""

from __future__ import annotations

from enum import StrEnum

NEWSLETTER_FIELD_NAME = "Newsletter"


class Newsletter(StrEnum):
    SUBSCRIBE = "Subscribe"
    PENDING_DOI = "Pending DOI"
    SUBSCRIBED = "Subscribed"
    UNSUBSCRIBED = "Unsubscribed"

    @classmethod
    def from_label(cls, label: str | None) -> Newsletter | None:
        """The option for a label as Pipedrive shows it (case and surrounding blanks ignored).

        ``None`` or an empty label means the field is empty; an unknown label raises ``ValueError``
        (someone renamed an option in Pipedrive: fail loudly rather than guess consent).
        """
        if label is None or not label.strip():
            return None
        wanted = " ".join(label.split()).casefold()
        for option in cls:
            if option.value.casefold() == wanted:
                return option
        raise ValueError(
            f"unknown {NEWSLETTER_FIELD_NAME} option {label!r}; expected one of "
            f"{', '.join(o.value for o in cls)} (run `pmsync setup` to repair the field)"
        )


#: The enum options of the field, in the order `pmsync setup` creates them.
NEWSLETTER_OPTIONS: tuple[str, ...] = tuple(option.value for option in Newsletter)
