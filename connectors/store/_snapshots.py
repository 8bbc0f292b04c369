"""Person snapshots: last known state per Pipedrive person, for reconcile diffs at 1,000,000 persons.

Reads are keyset-paged (``WHERE person_id > :last ORDER BY person_id LIMIT n``), each page in its own
short read: memory stays at one page, no read transaction is held open for minutes (which would stall
SQLite's WAL checkpoints and pin an old PostgreSQL snapshot), and a page costs the same at the end of
the table as at the start (no OFFSET).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, delete, func, select, text

from pmsync.rules.status import normalize_email

from ._base import BULK_CHUNK, IN_CHUNK, StoreBase, chunked
from ._types import as_utc, utcnow
from .models import SNAPSHOT_COLUMNS, PersonSnapshot, SnapshotRow, table_of

if TYPE_CHECKING:
    import pandas as pd

_SNAPSHOT: Table = table_of(PersonSnapshot)
_FRAME_DTYPES = {
    "person_id": "int64",
    "email": "string",
    "newsletter": "string",
    "marketing_status": "string",
    "maileon_permission": "Int64",
    "fields_hash": "string",
}


def _row(item: SnapshotRow | Mapping[str, Any], now: Any) -> dict[str, Any]:
    if isinstance(item, SnapshotRow):
        person_id, email, newsletter, status, permission, fields_hash, seen_at = (
            item.person_id,
            item.email,
            item.newsletter,
            item.marketing_status,
            item.maileon_permission,
            item.fields_hash,
            item.seen_at,
        )
    else:
        person_id, email, newsletter, status, permission, fields_hash, seen_at = (
            item["person_id"],
            item.get("email"),
            item.get("newsletter"),
            item.get("marketing_status"),
            item.get("maileon_permission"),
            item.get("fields_hash"),
            item.get("seen_at"),
        )
    return {
        "person_id": int(person_id),
        "email": normalize_email(email) if email else None,
        "newsletter": None if newsletter is None else str(newsletter),
        "marketing_status": None if status is None else str(status),
        "maileon_permission": None if permission is None else int(permission),
        "fields_hash": fields_hash,
        "seen_at": as_utc(seen_at) if seen_at is not None else now,
    }


class SnapshotOps(StoreBase):
    def snapshot_upsert_many(
        self, rows: Iterable[SnapshotRow | Mapping[str, Any]], chunk_size: int = BULK_CHUNK
    ) -> int:
        """Insert or replace snapshots by person_id, ``chunk_size`` rows per statement/transaction;
        returns rows written. Missing ``seen_at`` means now.

        SQLite: executemany of INSERT … ON CONFLICT DO UPDATE. PostgreSQL: one
        ``INSERT … SELECT FROM unnest(<column arrays>) ON CONFLICT DO UPDATE`` per chunk (about twice
        as fast as a pipelined executemany).
        """
        now = utcnow()
        write = self._upsert_pg_unnest if self.dialect == "postgresql" else self._upsert_executemany
        written = 0
        for batch in chunked(rows, chunk_size):
            # one row per person per statement (PostgreSQL refuses to update a row twice), in key
            # order (concurrent upserters lock rows in the same order: no deadlocks)
            by_id = {r["person_id"]: r for r in (_row(item, now) for item in batch)}
            params = [by_id[k] for k in sorted(by_id)]
            with self._write() as conn:
                write(conn, params)
            written += len(params)
        return written

    def _upsert_executemany(self, conn: Connection, params: list[dict[str, Any]]) -> None:
        ins = self._insert(_SNAPSHOT)
        stmt = ins.on_conflict_do_update(
            index_elements=["person_id"],
            set_={c: ins.excluded[c] for c in SNAPSHOT_COLUMNS if c != "person_id"},
        )
        conn.execute(stmt, params)

    def _upsert_pg_unnest(self, conn: Connection, params: list[dict[str, Any]]) -> None:
        dialect = conn.dialect
        columns = ", ".join(SNAPSHOT_COLUMNS)
        arrays = ", ".join(
            f"CAST(:{c} AS {_SNAPSHOT.c[c].type.compile(dialect=dialect)}[])" for c in SNAPSHOT_COLUMNS
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in SNAPSHOT_COLUMNS if c != "person_id")
        stmt = text(
            f"INSERT INTO {_SNAPSHOT.name} ({columns}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT (person_id) DO UPDATE SET {updates}"
        )
        conn.execute(stmt, {c: [p[c] for p in params] for c in SNAPSHOT_COLUMNS})

    def snapshot_get_many(self, person_ids: Iterable[int]) -> dict[int, SnapshotRow]:
        found: dict[int, SnapshotRow] = {}
        for batch in chunked(sorted({int(p) for p in person_ids}), IN_CHUNK):
            stmt = select(*(_SNAPSHOT.c[c] for c in SNAPSHOT_COLUMNS)).where(_SNAPSHOT.c.person_id.in_(batch))
            with self._read() as conn:
                for row in conn.execute(stmt):
                    found[row.person_id] = SnapshotRow(*row)
        return found

    def snapshot_by_email(self, emails: Iterable[str]) -> dict[str, list[SnapshotRow]]:
        """Every person sharing each address (lower-cased), ordered by person_id."""
        found: dict[str, list[SnapshotRow]] = {}
        for batch in chunked(sorted({normalize_email(e) for e in emails if e}), IN_CHUNK):
            stmt = (
                select(*(_SNAPSHOT.c[c] for c in SNAPSHOT_COLUMNS))
                .where(_SNAPSHOT.c.email.in_(batch))
                .order_by(_SNAPSHOT.c.person_id)
            )
            with self._read() as conn:
                for row in conn.execute(stmt):
                    found.setdefault(row.email, []).append(SnapshotRow(*row))
        return found

    def snapshot_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(_SNAPSHOT)).scalar_one())

    def snapshot_delete(self, person_ids: Iterable[int]) -> int:
        """Forget persons (deleted or merged away in Pipedrive)."""
        removed = 0
        for batch in chunked(sorted({int(p) for p in person_ids}), IN_CHUNK):
            with self._write() as conn:
                removed += conn.execute(delete(_SNAPSHOT).where(_SNAPSHOT.c.person_id.in_(batch))).rowcount
        return removed

    def snapshot_iter(
        self, chunk_size: int = 10_000, after_person_id: int | None = None
    ) -> Iterator[list[SnapshotRow]]:
        """All snapshots as lists of up to ``chunk_size`` rows, ordered by person_id. Resume a stopped
        scan with ``after_person_id`` = the last person_id handled."""
        columns = [_SNAPSHOT.c[c] for c in SNAPSHOT_COLUMNS]
        last = after_person_id
        while True:
            stmt = select(*columns).order_by(_SNAPSHOT.c.person_id).limit(chunk_size)
            if last is not None:
                stmt = stmt.where(_SNAPSHOT.c.person_id > last)
            with self._read() as conn:
                page = [SnapshotRow(*row) for row in conn.execute(stmt)]
            if not page:
                return
            yield page
            if len(page) < chunk_size:
                return
            last = page[-1].person_id

    def snapshot_frames(
        self,
        chunk_size: int = 50_000,
        columns: Sequence[str] | None = None,
        after_person_id: int | None = None,
    ) -> Iterator[pd.DataFrame]:
        """All snapshots as pandas DataFrames of up to ``chunk_size`` rows, ordered by person_id.

        Each frame comes from its own ``pd.read_sql`` over one keyset page, with nullable dtypes
        (``boolean``, ``Int64``, ``string``) and ``seen_at`` as ``datetime64[…, UTC]``.
        """
        import pandas as pd

        wanted = list(columns) if columns is not None else list(SNAPSHOT_COLUMNS)
        unknown = set(wanted) - set(SNAPSHOT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown snapshot columns: {sorted(unknown)}; known: {list(SNAPSHOT_COLUMNS)}")
        if "person_id" not in wanted:
            wanted.insert(0, "person_id")  # the paging key
        last = after_person_id
        while True:
            stmt = select(*(_SNAPSHOT.c[c] for c in wanted)).order_by(_SNAPSHOT.c.person_id).limit(chunk_size)
            if last is not None:
                stmt = stmt.where(_SNAPSHOT.c.person_id > last)
            with self.engine.connect() as conn:
                frame = pd.read_sql(stmt, conn)
            if frame.empty:
                return
            frame = frame.astype({c: t for c, t in _FRAME_DTYPES.items() if c in frame.columns})
            if "seen_at" in frame.columns:
                frame["seen_at"] = pd.to_datetime(frame["seen_at"], utc=True)
            yield frame
            if len(frame) < chunk_size:
                return
            last = int(frame["person_id"].iloc[-1])
