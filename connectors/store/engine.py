"""Opening the database: URL rules, engine settings per backend, table creation and schema version.

SQLite (default, ``sqlite:///.pmsync/pmsync.db``)
    WAL journal (readers never block the writer), ``synchronous=FULL`` (a commit is on disk before the
    receiver answers 2xx: ~3 ms per webhook, worth it), ``busy_timeout`` so concurrent writers queue
    instead of failing, and every write transaction starts with ``BEGIN IMMEDIATE``: a writer takes the write
    lock up front, so two processes can never both read-then-write the same rows (the inbox claim
    relies on it) and lock upgrades never fail with "database is locked" mid-transaction.

PostgreSQL (``postgresql://…`` or ``postgresql+psycopg://…``)
    Driven by psycopg 3. ``postgresql://`` and ``postgres://`` are rewritten to ``postgresql+psycopg://``.
    An optional ``schema`` puts every table in that schema (created when missing) via ``search_path``.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from ._types import json_dumps, utcnow
from .models import SCHEMA_VERSION, STORE_TABLES, ConsentLedgerEntry, SchemaVersion, table_of

#: Execution option a write transaction sets so SQLite opens it with BEGIN IMMEDIATE.
WRITE_OPTION = "pmsync_write"
#: Any constant shared by all pmsync processes: serializes table creation on PostgreSQL.
_PG_INIT_LOCK = 0x706D73796E63  # "pmsync"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class StoreError(Exception):
    """The state store cannot be opened or used as asked; the text says what to do."""


def normalize_url(url: str | URL) -> URL:
    """The URL with PostgreSQL pointed at psycopg 3 (``postgresql://`` → ``postgresql+psycopg://``)."""
    raw = url if isinstance(url, URL) else url.strip()
    if isinstance(raw, str) and raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        parsed = make_url(raw)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the full URL in it
        raise StoreError(f"PMSYNC_DATABASE_URL is not a database URL ({type(exc).__name__})") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///path/to/file.db "
            "or postgresql://user@host:5432/dbname"
        )
    return parsed


def safe_url(url: URL) -> str:
    """The URL as text with any password hidden (fit for logs and error messages)."""
    return url.render_as_string(hide_password=True)


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def build_engine(
    url: URL, *, schema: str | None = None, busy_timeout_seconds: float = 30.0, echo: bool = False
) -> Engine:
    """An engine configured for concurrent use by several threads and processes."""
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, busy_timeout_seconds=busy_timeout_seconds, echo=echo)
    else:
        engine = _postgres_engine(url, schema=schema, echo=echo)
    _forget_pool_after_fork(engine)
    return engine


def _forget_pool_after_fork(engine: Engine) -> None:
    """A forked child (process pools, ``multiprocessing`` fork) must not reuse the parent's open
    connections: it starts with an empty pool and leaves the parent's connections alone."""
    ref = weakref.ref(engine)

    def after_in_child() -> None:
        child_engine = ref()
        if child_engine is not None:
            child_engine.dispose(close=False)

    os.register_at_fork(after_in_child=after_in_child)


def _sqlite_engine(url: URL, *, busy_timeout_seconds: float, echo: bool) -> Engine:
    memory = _is_memory_sqlite(url)
    if not memory and url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
    engine = create_engine(
        url,
        echo=echo,
        json_serializer=json_dumps,
        connect_args={"timeout": busy_timeout_seconds, "check_same_thread": False},
        **kwargs,
    )
    busy_ms = int(busy_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start (pysqlite would
        # otherwise emit its own deferred BEGIN lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA synchronous=FULL")  # a stored webhook survives power loss
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _postgres_engine(url: URL, *, schema: str | None, echo: bool) -> Engine:
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if schema is not None:
        if not _SCHEMA_NAME.match(schema):
            raise StoreError(f"schema name {schema!r} is not a plain SQL identifier")
        connect_args["options"] = f"-c search_path={schema}"
    return create_engine(
        url,
        echo=echo,
        json_serializer=json_dumps,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


# ------------------------------------------------------------------------------- schema management
#: version -> (description, migration). A migration runs inside the init transaction.
MIGRATIONS: dict[int, tuple[str, Callable[[Connection], None]]] = {}

_SQLITE_LEDGER_GUARDS = [
    "CREATE TRIGGER IF NOT EXISTS consent_ledger_no_update BEFORE UPDATE ON consent_ledger "
    "BEGIN SELECT RAISE(ABORT, 'consent_ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS consent_ledger_no_delete BEFORE DELETE ON consent_ledger "
    "BEGIN SELECT RAISE(ABORT, 'consent_ledger is append-only'); END",
]
_PG_LEDGER_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pmsync_consent_ledger_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'consent_ledger is append-only'; END $$"
)
#: trigger name -> definition (created only when missing: no DDL, no table lock on a normal start)
_PG_LEDGER_TRIGGERS = {
    "consent_ledger_append_only": "CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE "
    "ON consent_ledger FOR EACH ROW EXECUTE FUNCTION pmsync_consent_ledger_append_only()",
    "consent_ledger_no_truncate": "CREATE TRIGGER consent_ledger_no_truncate BEFORE TRUNCATE "
    "ON consent_ledger FOR EACH STATEMENT EXECUTE FUNCTION pmsync_consent_ledger_append_only()",
}


def _guard_ledger(conn: Connection) -> None:
    """Make the database itself refuse UPDATE/DELETE (and on PostgreSQL TRUNCATE) of the ledger."""
    if conn.dialect.name != "postgresql":
        for statement in _SQLITE_LEDGER_GUARDS:
            conn.exec_driver_sql(statement)
        return
    present = set(
        conn.execute(
            text("SELECT tgname FROM pg_trigger WHERE tgrelid = CAST('consent_ledger' AS regclass)")
        ).scalars()
    )
    missing = [sql for name, sql in _PG_LEDGER_TRIGGERS.items() if name not in present]
    if missing:
        conn.exec_driver_sql(_PG_LEDGER_FUNCTION)
        for statement in missing:
            conn.exec_driver_sql(statement)


def init_schema(engine: Engine, *, schema: str | None = None) -> int:
    """Create missing tables, guard the ledger, record/check the schema version; returns the version.

    Safe to run from several processes at once (PostgreSQL: advisory lock; SQLite: BEGIN IMMEDIATE).
    """
    dialect = engine.dialect.name
    if dialect == "postgresql" and schema is not None:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_INIT_LOCK)))
            # Our tables only: another library's SQLModel tables are not ours to create.
            SQLModel.metadata.create_all(conn, tables=STORE_TABLES, checkfirst=True)
            current = conn.execute(select(func.max(table_of(SchemaVersion).c.version))).scalar()
            if current is None:
                _record_version(conn, SCHEMA_VERSION, "initial schema")
                current = SCHEMA_VERSION
            elif current > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {current}, newer than this pmsync understands "
                    f"({SCHEMA_VERSION}): upgrade pmsync"
                )
            while current < SCHEMA_VERSION:
                current += 1
                description, migrate = MIGRATIONS[current]
                migrate(conn)
                _record_version(conn, current, description)
            assert ConsentLedgerEntry.__tablename__ == "consent_ledger"
            _guard_ledger(conn)
    return current


def _record_version(conn: Connection, version: int, description: str) -> None:
    conn.execute(
        table_of(SchemaVersion).insert().values(version=version, applied_at=utcnow(), description=description)
    )


def open_engine(
    url: str | URL, *, schema: str | None = None, busy_timeout_seconds: float = 30.0, echo: bool = False
) -> tuple[Engine, URL]:
    """Normalize ``url``, build the engine and make sure the schema is in place."""
    parsed = normalize_url(url)
    engine = build_engine(parsed, schema=schema, busy_timeout_seconds=busy_timeout_seconds, echo=echo)
    try:
        init_schema(engine, schema=schema)
    except StoreError:
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = (
            str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        raise StoreError(f"cannot open the state store at {safe_url(parsed)}: {reason}") from exc
    return engine, parsed
