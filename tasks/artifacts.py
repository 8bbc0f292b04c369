"""Prefect artifacts, always created synchronously (pmsync's code that publishes them is sync).

Prefect's artifact functions decide sync or async from the run context: inside an async flow's run
they return a coroutine even when called from sync code — and deployments run the async twins of
pmsync's flows (``flows/deployed.py``). ``_sync=True`` is Prefect's switch for that choice.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def markdown(markdown: str, *, key: str | None = None, description: str | None = None) -> Any:
    return create_markdown_artifact(markdown=markdown, key=key, description=description,
                                    _sync=True)  # type: ignore[call-arg]


def table(table: Any, *, key: str | None = None, description: str | None = None) -> Any:
    return create_table_artifact(table=table, key=key, description=description, _sync=True)  # type: ignore[call-arg]


def progress(progress: float, *, key: str | None = None, description: str | None = None) -> Any:
    return create_progress_artifact(progress=progress, key=key, description=description,
                                    _sync=True)  # type: ignore[call-arg]


def update_progress(artifact_id: UUID, progress: float) -> Any:
    return update_progress_artifact(artifact_id=artifact_id, progress=progress, _sync=True)  # type: ignore[call-arg]
