"""The audit trail in the store: newest first, append-only, bounded by count and age, migrated in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from choreo_cp.store import SCHEMA_VERSION, AuditRecord, Store


def record(n: int, dataplane: str = "dp1", at: str | None = None) -> AuditRecord:
    extra = {"at": at} if at is not None else {}
    return AuditRecord(
        who="admin",
        client="127.0.0.1",
        dataplane=dataplane,
        app=f"ChoreoApp/dev/app-{n}",
        kind="logs",
        params={"tailLines": n},
        status=200,
        code="done",
        bytes=n * 10,
        duration_seconds=0.5,
        **extra,
    )


async def test_records_are_listed_newest_first_and_filtered_by_dataplane(tmp_path: Path) -> None:
    async with Store(tmp_path / "cp.db") as store:
        for n in range(5):
            await store.append_audit(record(n, dataplane="dp1" if n % 2 == 0 else "dp2"))
        everything = await store.list_audit()
        assert [r.app for r in everything] == [f"ChoreoApp/dev/app-{n}" for n in (4, 3, 2, 1, 0)]
        assert everything[0].params == {"tailLines": 4} and everything[0].bytes == 40
        assert [r.app[-1] for r in await store.list_audit("dp2")] == ["3", "1"]
        assert len(await store.list_audit(limit=2)) == 2


async def test_the_trail_is_bounded_by_count_and_by_age(tmp_path: Path) -> None:
    async with Store(tmp_path / "cp.db") as store:
        store.audit_max_rows = 3
        pruned = [await store.append_audit(record(n)) for n in range(5)]
        assert pruned == [0, 0, 0, 1, 1]
        assert [r.app[-1] for r in await store.list_audit()] == ["4", "3", "2"]
        # a record older than the age bound goes at the next append
        store.audit_max_rows, store.audit_max_age = 100, 1e9
        assert await store.append_audit(record(7, at="2000-01-01T00:00:00.000000Z")) == 0
        store.audit_max_age = 3600
        assert await store.append_audit(record(8)) == 1
        assert [r.app[-1] for r in await store.list_audit()] == ["8", "4", "3", "2"]


async def test_the_trail_is_append_only(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db) as store:
        await store.append_audit(record(1))
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET bytes = 0")
    finally:
        conn.close()


async def test_a_version_2_database_gets_the_audit_table(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db) as store:
        await store.register_dataplane("dp1")
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_append_only")
    conn.execute("DROP TABLE audit")
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    async with Store(db) as store:
        assert await store.get_dataplane("dp1") is not None
        await store.append_audit(record(1))
        assert len(await store.list_audit()) == 1
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.close()
    assert SCHEMA_VERSION >= 3  # later migrations are idempotent, so they re-apply over the stamp
