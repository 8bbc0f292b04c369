"""pmsync: consent-safe two-way sync between Pipedrive and Maileon."""

__version__ = "0.1.0"
