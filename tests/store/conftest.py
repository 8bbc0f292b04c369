"""Fixtures for the store tests: every `store` test runs on SQLite (a file under tmp_path) and on the
real PostgreSQL server (a fresh schema per test, dropped afterwards).

PostgreSQL URL: env ``PMSYNC_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
The PostgreSQL variants are marked ``postgres`` (deselect with ``-m "not postgres"``) and skip with
instructions when no server answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

import psycopg
import pytest
from sqlalchemy.engine import make_url

from connectors.store import Store

PG_URL = os.environ.get("PMSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string (what psycopg.connect takes)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@cache
def postgres_unavailable() -> str | None:
    """None when the test server answers, else the skip message."""
    parsed = make_url(PG_URL)
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    try:
        psycopg.connect(libpq_url(PG_URL), connect_timeout=3).close()
    except Exception as exc:
        return (
            f"PostgreSQL not reachable at {where}: start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            f"(or set PMSYNC_TEST_POSTGRES_URL) [{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}]"
        )
    return None


def drop_schema(schema: str) -> None:
    with psycopg.connect(libpq_url(PG_URL), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Backend:
    """Where a test's store lives; `open()` gives another, independent Store (own engine and pool),
    which is how the concurrency tests stand in for separate processes."""

    name: str
    url: str
    schema: str | None = None
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = Store.from_url(self.url, schema=self.schema)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        directory = tmp_path_factory.mktemp("store")
        b = Backend("sqlite", f"sqlite:///{directory}/state/pmsync.db")
        yield b
        b.close_all()
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    b = Backend("postgres", PG_URL, schema=f"pmsync_test_{uuid.uuid4().hex[:12]}")
    try:
        yield b
    finally:
        b.close_all()
        drop_schema(b.schema or "")


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def open_store(backend: Backend) -> Callable[[], Store]:
    return backend.open
