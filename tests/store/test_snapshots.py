"""Person snapshots: fast bulk upsert, keyset-paged reads, pandas frames in chunks."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pandas as pd
import pytest

from connectors.store import SnapshotRow, Store

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rows(n: int, start: int = 1, status: str = "subscribed") -> list[SnapshotRow]:
    return [
        SnapshotRow(
            person_id=i,
            email=f"P{i}@Example.com",
            newsletter="Subscribed" if i % 2 == 0 else "Unsubscribed",
            marketing_status=status,
            maileon_permission=(i % 5) + 1 if i % 3 else None,
            fields_hash=f"h{i}",
            seen_at=T0,
        )
        for i in range(start, start + n)
    ]


def test_snapshot_upsert_inserts_then_replaces_by_person_id(store: Store) -> None:
    assert store.snapshot_upsert_many(rows(3)) == 3
    assert (
        store.snapshot_upsert_many(
            [{"person_id": 2, "email": "new@example.com", "marketing_status": "unsubscribed"}]
        )
        == 1
    )
    got = store.snapshot_get_many([1, 2, 3, 99])
    assert set(got) == {1, 2, 3}
    assert got[1] == SnapshotRow(1, "p1@example.com", "Unsubscribed", "subscribed", 2, "h1", T0)
    two = got[2]
    assert (two.email, two.marketing_status, two.newsletter, two.maileon_permission) == (
        "new@example.com",
        "unsubscribed",
        None,
        None,
    )
    assert two.seen_at is not None and two.seen_at > T0  # no seen_at given: now
    assert store.snapshot_count() == 3


def test_the_last_row_for_a_person_in_one_batch_wins(store: Store) -> None:
    store.snapshot_upsert_many(
        [SnapshotRow(1, marketing_status="subscribed"), SnapshotRow(1, marketing_status="unsubscribed")]
    )
    assert store.snapshot_get_many([1])[1].marketing_status == "unsubscribed"


def test_every_person_sharing_an_address_is_found_by_email(store: Store) -> None:
    store.snapshot_upsert_many(
        [SnapshotRow(5, "Shared@x.io"), SnapshotRow(2, "shared@x.io"), SnapshotRow(9, "own@x.io")]
    )
    found = store.snapshot_by_email(["SHARED@x.io", "missing@x.io"])
    assert {k: [r.person_id for r in v] for k, v in found.items()} == {"shared@x.io": [2, 5]}


def test_deleted_persons_are_forgotten(store: Store) -> None:
    store.snapshot_upsert_many(rows(5))
    assert store.snapshot_delete([2, 4, 77]) == 2
    assert sorted(store.snapshot_get_many(range(1, 6))) == [1, 3, 5]


def test_snapshot_iter_yields_chunks_ordered_by_person_id_and_resumes_after_an_id(store: Store) -> None:
    store.snapshot_upsert_many(list(reversed(rows(25))))
    chunks = list(store.snapshot_iter(chunk_size=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [r.person_id for c in chunks for r in c] == list(range(1, 26))
    resumed = list(store.snapshot_iter(chunk_size=10, after_person_id=20))
    assert [r.person_id for c in resumed for r in c] == [21, 22, 23, 24, 25]
    assert list(store.snapshot_iter(chunk_size=5, after_person_id=25)) == []


def test_snapshot_frames_come_in_chunks_with_nullable_dtypes(store: Store) -> None:
    store.snapshot_upsert_many(rows(12))
    frames = list(store.snapshot_frames(chunk_size=5))
    assert [len(f) for f in frames] == [5, 5, 2]
    whole = pd.concat(frames, ignore_index=True)
    assert whole["person_id"].tolist() == list(range(1, 13))
    assert str(whole["person_id"].dtype) == "int64"
    assert str(whole["newsletter"].dtype) == "string"
    assert str(whole["maileon_permission"].dtype) == "Int64"
    assert whole["maileon_permission"].isna().sum() == 4  # every third person has none
    assert str(whole["seen_at"].dtype).startswith("datetime64") and str(whole["seen_at"].dt.tz) == "UTC"
    assert whole.loc[0, "email"] == "p1@example.com"


def test_snapshot_frames_can_select_columns_and_refuse_unknown_ones(store: Store) -> None:
    store.snapshot_upsert_many(rows(3))
    (frame,) = store.snapshot_frames(columns=["email", "marketing_status"])
    assert list(frame.columns) == ["person_id", "email", "marketing_status"]
    with pytest.raises(ValueError, match="unknown snapshot columns"):
        list(store.snapshot_frames(columns=["password"]))


def test_snapshot_bulk_upsert_of_100k_rows_takes_seconds(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 100_000
    data = rows(n)
    t0 = time.perf_counter()
    assert store.snapshot_upsert_many(data) == n
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert store.snapshot_upsert_many(rows(n, status="unsubscribed")) == n  # every row an update
    update_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    framed = sum(len(f) for f in store.snapshot_frames(chunk_size=50_000))
    frame_s = time.perf_counter() - t0
    assert framed == n
    assert store.snapshot_get_many([n])[n].marketing_status == "unsubscribed"
    with capsys.disabled():
        print(
            f"\n[{store.dialect}] snapshots, {n:,} rows: insert {insert_s:.2f}s, upsert-update {update_s:.2f}s, "
            f"read back as DataFrame chunks {frame_s:.2f}s"
        )
