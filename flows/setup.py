"""Prepare both accounts for pmsync (see tasks.setup)."""

from __future__ import annotations

from prefect import flow

from tasks.setup import SetupReport, prepare_accounts


@flow(name="setup")
def setup() -> SetupReport:
    """Validate credentials; create the Newsletter field and Maileon custom fields where missing."""
    return prepare_accounts()
