"""Fixtures for the store tests: every `store` test runs on SQLite (a fresh file per test) and on the
real PostgreSQL server.

PostgreSQL isolation: one fresh schema per test session (``pmsync_test_<random>``, reached through
``search_path``, dropped at the end), emptied after every test. Emptying is a handful of DELETEs;
creating and dropping ten tables per test cost ~0.35 s each on a busy machine.

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

from connectors.store import SCHEMA_VERSION, Store
from connectors.store.models import STORE_TABLES

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


def empty_schema(schema: str) -> None:
    """Delete every row a test left (the ledger's append-only triggers are lifted for this only)."""
    with psycopg.connect(libpq_url(PG_URL)) as conn:
        conn.execute(f'SET LOCAL search_path TO "{schema}"')
        conn.execute("ALTER TABLE consent_ledger DISABLE TRIGGER USER")
        for table in STORE_TABLES:
            if table.name == "schema_version":
                conn.execute("DELETE FROM schema_version WHERE version > %s", (SCHEMA_VERSION,))
            else:
                conn.execute(f"DELETE FROM {table.name}")
        conn.execute("ALTER TABLE consent_ledger ENABLE TRIGGER USER")
        conn.commit()


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """The session's PostgreSQL schema, with the store's tables created once."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"pmsync_test_{uuid.uuid4().hex[:12]}"
    Store.from_url(PG_URL, schema=schema).close()
    try:
        yield schema
    finally:
        drop_schema(schema)


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
    schema: str = request.getfixturevalue("postgres_schema")
    b = Backend("postgres", PG_URL, schema=schema)
    try:
        yield b
    finally:
        b.close_all()
        empty_schema(schema)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def open_store(backend: Backend) -> Callable[[], Store]:
    return backend.open
