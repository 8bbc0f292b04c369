"""Maileon REST API 1.0 simulator (XQueue): contacts, DOI, unsubscriptions, transactions, webhooks.

`MaileonSim(api_key=..., webhook_time_scale=...)` exposes `.app` (ASGI), `.state`, `.dispatcher`,
`.reset()`, `.close()`, `.seed(contacts, seed)` and in-process helpers; see app.py for the auth and
control-surface contract and contacts.py / transactions.py / webhooks.py for the documented choices.
Run standalone: ``python -m simulators.maileon --port 8082``.
"""

from .app import MaileonConfig, MaileonSim

__all__ = ["MaileonConfig", "MaileonSim"]
