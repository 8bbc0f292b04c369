"""The only code that talks to Pipedrive and Maileon (plus the SQLModel store in `connectors.store`).

- :mod:`connectors.http`      shared transport: limiter, retries, error classification, accounting
- :mod:`connectors.errors`    ConnectorError and its subclasses (what callers catch)
- :mod:`connectors.redact`    secret redaction for logs and exception text
- :mod:`connectors.pipedrive` PipedriveClient (+ wire models in `pipedrive_models`)
- :mod:`connectors.maileon`   MaileonClient (+ `maileon_models`, XML codec in `maileon_xml`)

No Prefect import here or below: tasks wrap these clients.
"""

from connectors.errors import (
    BudgetExhausted,
    ClientBlocked,
    ConfigurationError,
    ConnectorError,
    InvalidInputError,
    NotFoundError,
    ProtocolError,
    RateLimited,
    TransientError,
)

__all__ = [
    "BudgetExhausted",
    "ClientBlocked",
    "ConfigurationError",
    "ConnectorError",
    "InvalidInputError",
    "NotFoundError",
    "ProtocolError",
    "RateLimited",
    "TransientError",
]
