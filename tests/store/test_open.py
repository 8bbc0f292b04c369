"""Opening the store: URLs, SQLite settings, schema version, errors that say what to do."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from connectors.store import SCHEMA_VERSION, Store, StoreError, normalize_url
from connectors.store.models import STORE_TABLES
from pmsync.settings import Settings

from .conftest import Backend


def test_sqlite_url_creates_the_parent_directory_and_every_table(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "pmsync.db"
    with Store.from_url(f"sqlite:///{db}") as store:
        assert db.exists()
        with store.engine.connect() as conn:
            names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {t.name for t in STORE_TABLES} <= names


def test_sqlite_store_runs_in_wal_mode_with_a_busy_timeout_and_full_sync(tmp_path: Path) -> None:
    with (
        Store.from_url(f"sqlite:///{tmp_path}/s.db", busy_timeout_seconds=7) as store,
        store.engine.connect() as conn,
    ):
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: a stored webhook is on disk


def test_relative_sqlite_path_is_created_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Store.from_url("sqlite:///.pmsync/pmsync.db"):
        assert (tmp_path / ".pmsync" / "pmsync.db").exists()


def test_from_settings_opens_the_database_named_by_pmsync_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMSYNC_DATABASE_URL", f"sqlite:///{tmp_path}/from-env.db")
    with Store.from_settings(Settings(_env_file=None)) as store:  # type: ignore[call-arg]
        assert store.dialect == "sqlite"
    assert (tmp_path / "from-env.db").exists()


def test_in_memory_sqlite_is_one_database_shared_by_all_threads() -> None:
    with Store.from_url("sqlite://") as store:
        t = threading.Thread(target=lambda: store.set_watermark("w", "from-thread"))
        t.start()
        t.join()
        assert store.get_watermark("w") == "from-thread"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x/y.db", "sqlite:///x/y.db"),
    ],
)
def test_postgresql_urls_are_pointed_at_the_psycopg3_driver(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


def test_an_unsupported_database_url_is_refused_with_the_supported_forms() -> None:
    with pytest.raises(StoreError, match=r"sqlite:///.*postgresql://"):
        Store.from_url("mysql://u@h/db")
    with pytest.raises(StoreError, match="not a database URL"):
        Store.from_url("not a url")


def test_unreachable_postgresql_raises_store_error_that_hides_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        Store.from_url("postgresql://pmsync:hunter2secret@127.0.0.1:1/nowhere")
    message = str(caught.value)
    assert "cannot open the state store at postgresql+psycopg://pmsync:***@127.0.0.1:1/nowhere" in message
    assert "hunter2secret" not in message
    assert "hunter2secret" not in repr(caught.value)


def test_store_repr_hides_the_password() -> None:
    store = Store(engine=None, url=normalize_url("postgresql://u:topsecret@h/db"))  # type: ignore[arg-type]
    assert "topsecret" not in repr(store)
    assert "***" in repr(store)


def test_schema_version_is_recorded_once_and_reopening_is_idempotent(backend: Backend) -> None:
    first = backend.open()
    first.set_watermark("kept", "yes")
    second = backend.open()
    assert first.schema_version() == second.schema_version() == SCHEMA_VERSION
    assert second.get_watermark("kept") == "yes"
    with second.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == 1


def test_a_database_with_a_newer_schema_version_is_refused(backend: Backend) -> None:
    store = backend.open()
    with store.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
            {"v": SCHEMA_VERSION + 1, "t": datetime(2030, 1, 1)},
        )
    with pytest.raises(StoreError, match="newer than this pmsync understands"):
        backend.open()


def test_times_come_back_utc_aware_whatever_zone_they_went_in_with(backend: Backend) -> None:
    store = backend.open()
    cet = timezone(timedelta(hours=2))
    store.inbox_put(
        "pipedrive", "tz-aware", "person.change", 1, {}, received_at=datetime(2025, 6, 1, 14, 0, tzinfo=cet)
    )
    store.inbox_put("pipedrive", "tz-naive", "person.change", 1, {}, received_at=datetime(2025, 6, 1, 13, 0))
    aware = store.inbox_get("pipedrive", "tz-aware")
    naive = store.inbox_get("pipedrive", "tz-naive")
    assert aware is not None and naive is not None
    assert aware.received_at == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert aware.received_at.tzinfo == UTC
    assert naive.received_at == datetime(2025, 6, 1, 13, 0, tzinfo=UTC)  # naive input is taken as UTC


def test_a_forked_child_opens_its_own_connections(backend: Backend) -> None:
    import multiprocessing

    store = backend.open()
    store.set_watermark("parent", "1")  # the pool now holds a connection
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=store.set_watermark, args=("child", "2"))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.get_watermark("child") == "2"
    assert store.get_watermark("parent") == "1"  # the parent's connection still works
