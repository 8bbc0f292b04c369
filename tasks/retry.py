"""Task-level retry policy: the connectors already retried quickly; a task retries later, and only
for errors that can heal by waiting (never for bad input, bad credentials or an exhausted budget)."""

from __future__ import annotations

from typing import Any

from connectors.errors import BudgetExhausted, ConnectorError

#: Seconds between task attempts (tests shrink these with `with_options`).
TASK_RETRY_DELAYS: list[float] = [10, 60, 300]


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry transient connector failures only."""
    try:
        state.result()
    except BudgetExhausted:
        return False
    except ConnectorError as exc:
        return bool(getattr(exc, "retryable", False))
    except TimeoutError:  # the store's LockTimeout: another run holds the lock; it will be released
        return True
    except Exception:
        return False
    return False
