"""The store's history of accepted app specs: written with each accepted spec, bounded per app,
kept across the revision log's compaction, stamped with the image that ran (from Ready statuses),
on both engines (SQLite, PostgreSQL); and seeded by SQLite's migration from the previous schema
(a PostgreSQL store starts at schema 4 or later)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from choreo_cp.store import SCHEMA_VERSION, LogGap, Store, hash_token, object_key
from choreo_cp.store.history import HistoryNote
from choreo_cp.store.schema import MIGRATIONS, VERSION_KEY

ENV = {"displayName": "Dev"}
KEY = object_key("ChoreoApp", "dev", "shop")
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


StoreDb = Callable[..., str]


def stored_rows(db: str) -> int:
    """History rows the database holds for shop, pruned or not yet."""
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as pg:
            row = pg.execute("SELECT count(*) FROM history WHERE key=%s", (KEY,)).fetchone()
        return int(row[0]) if row else 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM history WHERE key=?", (KEY,)).fetchone()[0])
    finally:
        conn.close()


def spec(tag: str) -> dict[str, Any]:
    return {"environment": "dev", "image": f"ghcr.io/acme/shop:{tag}"}


async def _store(db: str | Path, **kwargs: Any) -> Store:
    store = await Store(db, synchronous="NORMAL", **kwargs).open()
    await store.register_dataplane("dp1")
    await store.put_object("dp1", "Environment", "dev", "dev", ENV)
    return store


async def test_every_accepted_spec_is_kept_with_its_author_newest_first(store_db: StoreDb) -> None:
    store = await _store(store_db())
    try:
        first = await store.put_object(
            "dp1", "ChoreoApp", "dev", "shop", spec("1"), note=HistoryNote("alice")
        )
        same = await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec("1"), note=HistoryNote("bob"))
        second = await store.put_object(
            "dp1", "ChoreoApp", "dev", "shop", spec("2"), note=HistoryNote("carol", "rollback", 2)
        )
        assert not same.changed  # an identical spec is no revision, so no history either
        entries = await store.list_history("dp1", KEY)
        assert [(e.revision, e.author, e.cause, e.rollback_of) for e in entries] == [
            (second.revision, "carol", "rollback", 2),
            (first.revision, "alice", "apply", None),
        ]
        assert entries[1].spec == spec("1") and entries[1].ran_image is None
        assert entries[0].at > entries[1].at
        found = await store.get_history("dp1", KEY, first.revision)
        assert found is not None and found.spec == spec("1")
        assert await store.get_history("dp1", KEY, 999) is None
        # environments have no history; only apps are rolled back
        assert await store.list_history("dp1", object_key("Environment", "dev", "dev")) == []
    finally:
        await store.close()


async def test_history_is_bounded_per_app_oldest_pruned(store_db: StoreDb) -> None:
    db = store_db()
    store = await _store(db)
    store.history_limit = 3
    try:
        revisions = []
        for i in range(7):
            revisions.append(
                (await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec(str(i)))).revision
            )
            await store.put_object("dp1", "ChoreoApp", "dev", "other", spec(f"o{i % 2}"))
        entries = await store.list_history("dp1", KEY)
        assert [e.revision for e in entries] == revisions[::-1][:3]
        assert [e.spec["image"] for e in entries] == [f"ghcr.io/acme/shop:{i}" for i in (6, 5, 4)]
        other = await store.list_history("dp1", object_key("ChoreoApp", "dev", "other"))
        assert len(other) == 3  # each app its own bound
        # past the bound a revision is gone, whether or not its row is pruned yet (done in steps)
        assert await store.get_history("dp1", KEY, revisions[3]) is None
        assert await store.get_history("dp1", KEY, revisions[4]) is not None
        assert 3 <= stored_rows(db) <= 3 + 1  # the bound plus its pruning step (1/8 of it, at least 1)
    finally:
        await store.close()


async def test_history_survives_the_compaction_of_the_revision_log_and_deletion(store_db: StoreDb) -> None:
    store = await _store(store_db(), log_limit=2)
    try:
        revisions = []
        for i in range(20):
            revisions.append(
                (await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec(str(i)))).revision
            )
        with pytest.raises(LogGap):  # the tunnel's log no longer covers the early revisions
            await store.changes_since("dp1", revisions[0])
        await store.delete_object("dp1", "ChoreoApp", "dev", "shop")
        entries = await store.list_history("dp1", KEY)
        assert [e.revision for e in entries] == revisions[::-1]
        assert entries[-1].spec == spec("0")
    finally:
        await store.close()


def ready(revision: int, image: str, phase: str = "Ready") -> dict[str, Any]:
    return {"phase": phase, "revision": revision, "image": image, "ready": "1/1"}


async def test_the_image_that_ran_a_revision_is_stamped_from_ready_statuses_only(store_db: StoreDb) -> None:
    store = await _store(store_db())
    try:
        r1 = (await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec("1"))).revision
        # not Ready yet, or no digest: nothing ran that a rollback could pin
        store.queue_status("dp1", KEY, ready(r1, f"ghcr.io/acme/shop:1@{DIGEST}", phase="Progressing"))
        await store.flush()
        store.queue_status("dp1", KEY, ready(r1, "ghcr.io/acme/shop:1"))
        await store.flush()
        assert (await store.list_history("dp1", KEY))[0].ran_image is None
        store.queue_status("dp1", KEY, ready(r1, f"ghcr.io/acme/shop@{DIGEST}"))
        await store.flush()
        [entry] = await store.list_history("dp1", KEY)
        assert entry.ran_image == f"ghcr.io/acme/shop@{DIGEST}" and entry.ran_at is not None

        r2 = (await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec("2"))).revision
        # the single status row moves on to revision 2: revision 1 keeps what ran it
        store.queue_status("dp1", KEY, ready(r2, f"ghcr.io/acme/shop@{OTHER_DIGEST}"))
        await store.flush()
        # a late report of an unknown revision touches nothing
        store.queue_status("dp1", KEY, ready(r2 + 50, f"ghcr.io/acme/shop@{DIGEST}"))
        await store.flush()
        newest, oldest = await store.list_history("dp1", KEY)
        assert (newest.revision, newest.ran_image) == (r2, f"ghcr.io/acme/shop@{OTHER_DIGEST}")
        assert (oldest.revision, oldest.ran_image) == (r1, f"ghcr.io/acme/shop@{DIGEST}")
    finally:
        await store.close()


def write_v3_database(path: Path) -> None:
    """A store as the previous release (schema 3) left it: an Environment, two apps, one of them
    reported Ready at its current revision with a digest, the other Ready at an older revision."""
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:3]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("INSERT INTO meta(key, value) VALUES (?, '3')", (VERSION_KEY,))
    conn.execute(
        "INSERT INTO dataplanes(id, epoch, revision, horizon, token_hash, created_at)"
        " VALUES ('dp1', 'e1', 4, 0, ?, '2026-01-01T00:00:00.000000Z')",
        (hash_token("cpdp_v3"),),
    )
    rows = [
        ("Environment/dev", "Environment", "dev", "dev", '{"displayName":"Dev"}', 1),
        (KEY, "ChoreoApp", "dev", "shop", '{"environment":"dev","image":"ghcr.io/acme/shop:1"}', 3),
        (object_key("ChoreoApp", "dev", "cart"), "ChoreoApp", "dev", "cart",
         '{"environment":"dev","image":"ghcr.io/acme/cart:1"}', 4),
    ]  # fmt: skip
    for key, kind, env, name, text, rev in rows:
        conn.execute(
            "INSERT INTO objects VALUES ('dp1', ?, ?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00.000000Z')",
            (key, kind, env, name, text, f"h{rev}", rev),
        )
    conn.execute(
        "INSERT INTO status(dataplane, key, status, reported_at) VALUES ('dp1', ?, ?, 'T1')",
        (KEY, f'{{"phase":"Ready","revision":3,"image":"ghcr.io/acme/shop@{DIGEST}"}}'),
    )
    conn.execute(
        "INSERT INTO status(dataplane, key, status, reported_at) VALUES ('dp1', ?, ?, 'T2')",
        (object_key("ChoreoApp", "dev", "cart"), f'{{"phase":"Ready","revision":2,"image":"x@{DIGEST}"}}'),
    )
    conn.close()


async def test_migration_from_the_previous_schema_seeds_the_history_once(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    write_v3_database(db)
    for _ in range(2):  # opening it again changes nothing
        async with Store(db) as store:
            [shop] = await store.list_history("dp1", KEY)
            assert (shop.revision, shop.author, shop.cause) == (3, None, "apply")
            assert shop.spec == {"environment": "dev", "image": "ghcr.io/acme/shop:1"}
            assert (shop.ran_image, shop.ran_at) == (f"ghcr.io/acme/shop@{DIGEST}", "T1")
            [cart] = await store.list_history("dp1", object_key("ChoreoApp", "dev", "cart"))
            assert (cart.revision, cart.ran_image) == (4, None)  # its status describes revision 2
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key=?", (VERSION_KEY,)).fetchone() == (
        str(SCHEMA_VERSION),
    )
    assert conn.execute("SELECT count(*) FROM history").fetchone() == (2,)
    conn.close()
    async with Store(db) as store:  # and the migrated store records the next change
        result = await store.put_object(
            "dp1", "ChoreoApp", "dev", "shop", spec("2"), note=HistoryNote("admin")
        )
        assert result.revision == 5
        assert [e.revision for e in await store.list_history("dp1", KEY)] == [5, 3]


async def test_migration_4_applied_again_keeps_the_history_as_it_was(tmp_path: Path) -> None:
    store = await _store(tmp_path / "cp.db")
    try:
        for tag in ("1", "2"):
            await store.put_object("dp1", "ChoreoApp", "dev", "shop", spec(tag), note=HistoryNote("alice"))
        before = await store.list_history("dp1", KEY)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "cp.db")
    conn.execute("UPDATE meta SET value='3' WHERE key=?", (VERSION_KEY,))  # a restored meta row
    conn.commit()
    conn.close()
    async with Store(tmp_path / "cp.db") as store:
        assert await store.list_history("dp1", KEY) == before
