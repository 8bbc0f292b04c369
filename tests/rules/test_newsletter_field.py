"""The Newsletter person field: exactly four options, labels as Pipedrive shows them."""

from __future__ import annotations

import pytest

from pmsync.rules.newsletter import NEWSLETTER_FIELD_NAME, NEWSLETTER_OPTIONS, Newsletter


def test_the_field_is_named_newsletter_with_exactly_the_four_options_in_order() -> None:
    assert NEWSLETTER_FIELD_NAME == "Newsletter"
    assert NEWSLETTER_OPTIONS == ("Subscribe", "Pending DOI", "Subscribed", "Unsubscribed")


@pytest.mark.parametrize(("label", "option"), [("Subscribe", Newsletter.SUBSCRIBE),
                                               (" pending  doi ", Newsletter.PENDING_DOI),
                                               ("UNSUBSCRIBED", Newsletter.UNSUBSCRIBED),
                                               (None, None), ("", None)])
def test_labels_are_read_leniently(label: str | None, option: Newsletter | None) -> None:
    assert Newsletter.from_label(label) is option


def test_an_unknown_label_fails_loudly_instead_of_guessing_consent() -> None:
    with pytest.raises(ValueError, match="pmsync setup"):
        Newsletter.from_label("Maybe")
