"""What the store promises on both engines (SQLite, PostgreSQL) when writers run at once: revisions
gap-free and ordered across store instances, migrations applied once by replicas starting together,
group commits that batch concurrent writers, and a write never acknowledged when its group's commit
fails."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from choreo_cp.store import SCHEMA_VERSION, Store, StoreError, StoreUnavailable
from choreo_cp.store.schema import MIGRATIONS
from choreo_cp.store.schema_postgres import statements

StoreDb = Callable[..., str]
ENV = {"production": False}


def app(image: str) -> dict[str, Any]:
    return {"environment": "dev", "project": "p", "type": "service", "image": image}


def is_pg(db: str) -> bool:
    return db.startswith("postgresql://")


def sql(db: str, *statements: str) -> list[Any]:
    """Run statements on the database behind the store's back; the last one's rows."""
    rows: list[Any] = []
    if is_pg(db):
        with psycopg.connect(db, autocommit=True) as conn:
            for s in statements:
                cur = conn.execute(s)
                rows = cur.fetchall() if cur.description else []
        return rows
    with sqlite3.connect(db, isolation_level=None) as lite:
        for s in statements:
            rows = lite.execute(s).fetchall()
    return rows


def poison_commits(db: str) -> None:
    """A check deferred to COMMIT: a transaction that wrote a spec containing "poison" fails when
    it commits, after every write of it ran fine (the failure a full disk or a lost server gives)."""
    if is_pg(db):
        sql(
            db,
            """CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.spec LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned commit'; END IF;
               RETURN NULL; END $$""",
            """CREATE CONSTRAINT TRIGGER poison AFTER INSERT OR UPDATE ON objects
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poison()""",
        )
        return
    # SQLite checks a deferred foreign key at COMMIT: a poisoned spec adds a row pointing nowhere.
    sql(
        db,
        "CREATE TABLE poison_parent (id INTEGER PRIMARY KEY)",
        """CREATE TABLE poison_child (parent INTEGER
               REFERENCES poison_parent(id) DEFERRABLE INITIALLY DEFERRED)""",
        """CREATE TRIGGER poison AFTER INSERT ON objects WHEN NEW.spec LIKE '%poison%'
               BEGIN INSERT INTO poison_child(parent) VALUES (-1); END""",
    )


async def seeded(db: str) -> Store:
    store = await Store(db).open()
    await store.register_dataplane("dp1")
    await store.put_object("dp1", "Environment", "dev", "dev", ENV)
    return store


async def test_writers_of_two_stores_get_gap_free_ordered_revisions(store_db: StoreDb) -> None:
    """Two store instances (two connections or pools: two replicas) write one dataplane at once."""
    db = store_db()
    one = await seeded(db)
    two = await Store(db).open()
    per_writer = 15
    try:

        async def writer(store: Store, name: str) -> list[int]:
            seen = []
            for i in range(per_writer):
                result = await store.put_object("dp1", "ChoreoApp", "dev", name, app(f"r/{name}:{i}"))
                seen.append(result.revision)
            return seen

        runs = await asyncio.gather(*(writer(s, f"w{s is two}{i}") for s in (one, two) for i in range(4)))
        for seen in runs:  # each writer's own writes are ordered
            assert seen == sorted(seen) and len(set(seen)) == per_writer
        every = sorted(r for seen in runs for r in seen)
        total = per_writer * len(runs)
        assert every == list(range(2, total + 2))  # no revision given twice, none skipped
        logged = [c.revision for c in await two.changes_since("dp1", 0, limit=10_000)]
        assert logged == sorted(logged) and logged[-1] == total + 1
        record = await one.get_dataplane("dp1")
        assert record is not None and record.revision == total + 1
    finally:
        await one.close()
        await two.close()


async def test_replicas_starting_at_once_migrate_once(store_db: StoreDb) -> None:
    db = store_db()
    stores = await asyncio.gather(*(Store(db).open() for _ in range(4)))
    try:
        assert len({s.store_id for s in stores}) == 1  # one database, one id, minted once
        versions = sql(db, "SELECT value FROM meta WHERE key='schema_version'")
        assert versions == [(str(SCHEMA_VERSION),)]
        await stores[0].register_dataplane("dp1")
        assert await stores[3].get_dataplane("dp1") is not None
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_writes_share_group_commits(store_db: StoreDb) -> None:
    store = await seeded(store_db())
    try:
        groups, writes = store.writer.groups, store.writer.writes
        n = 64
        results = await asyncio.gather(
            *(store.put_object("dp1", "ChoreoApp", "dev", f"a{i}", app(f"r/a:{i}")) for i in range(n))
        )
        assert sorted(r.revision for r in results) == list(range(2, n + 2))
        assert store.writer.writes - writes == n
        assert store.writer.groups - groups < n // 4  # batched: far fewer commits than writes
        current = await store.list_objects("dp1", kind="ChoreoApp")
        assert len(current) == n
    finally:
        await store.close()


async def test_a_refused_write_costs_the_rest_of_its_group_nothing(store_db: StoreDb) -> None:
    store = await seeded(store_db())
    try:
        groups = store.writer.groups
        calls = [store.put_object("dp1", "ChoreoApp", "dev", f"a{i}", app("r/a:1")) for i in range(3)]
        calls.insert(1, store.put_object("nope", "Environment", "dev", "dev", ENV))
        calls.insert(3, store.put_object("dp1", "ChoreoApp", "qa", "x", app("r/a:1")))  # no env qa
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert store.writer.groups - groups == 1  # all five in one transaction
        assert isinstance(results[1], StoreError) and results[1].code == "not_found"
        assert isinstance(results[3], StoreError) and "environment 'qa'" in results[3].message
        good = [r for i, r in enumerate(results) if i not in (1, 3)]
        assert [r.revision for r in good] == [2, 3, 4]  # type: ignore[union-attr]
        assert await store.get_object("dp1", "ChoreoApp", "qa", "x") is None
    finally:
        await store.close()


async def test_a_group_whose_commit_fails_fails_every_write_in_it(store_db: StoreDb) -> None:
    db = store_db()
    store = await seeded(db)
    try:
        poison_commits(db)
        seen: list[str] = []
        store.changed_hooks.append(seen.append)
        groups = store.writer.groups
        images = ["r/a:1", "r/a:poison", "r/a:2", "r/a:3"]
        results = await asyncio.gather(
            *(store.put_object("dp1", "ChoreoApp", "dev", f"a{i}", app(im)) for i, im in enumerate(images)),
            return_exceptions=True,
        )
        # one group; its COMMIT failed: nobody is told their write is done, none of them is stored
        assert store.writer.groups == groups  # counts committed groups only
        assert all(isinstance(r, Exception) and not isinstance(r, StoreError) for r in results), results
        assert "poison" in str(results[0]) or "FOREIGN KEY" in str(results[0])
        assert await store.list_objects("dp1", kind="ChoreoApp") == []
        record = await store.get_dataplane("dp1")
        assert record is not None and record.revision == 1
        assert seen == []  # nobody was told the dataplane moved
        # the store works on: the next group commits
        result = await store.put_object("dp1", "ChoreoApp", "dev", "a0", app("r/a:9"))
        assert result.revision == 2 and seen == ["dp1"]
    finally:
        await store.close()


async def test_lost_connections_are_unavailable_then_recover(postgres_db: Callable[[], str]) -> None:
    """A PostgreSQL server that drops the store's connections (a restart, a failover): calls fail as
    StoreUnavailable (the REST API's 503, the tunnel's retry), never hang, and the pool recovers."""
    db = postgres_db()
    store = await seeded(db)
    try:
        sql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
        outcomes: list[object] = []
        for i in range(10):
            try:
                outcomes.append(await store.put_object("dp1", "Environment", f"e{i}", f"e{i}", ENV))
                break
            except StoreUnavailable as exc:
                outcomes.append(exc)
        assert isinstance(outcomes[0], StoreUnavailable), outcomes  # the pooled connection was dead
        assert not isinstance(outcomes[-1], Exception), outcomes  # and a later call got a new one
        assert isinstance(outcomes[0], sqlite3.OperationalError)  # what the API maps to 503
    finally:
        await store.close()


def test_every_migration_has_a_postgresql_form() -> None:
    """A migration written in SQLite's dialect only must fail here, not at a replica's start."""
    for migration in MIGRATIONS:
        assert statements(migration), migration.version


@pytest.mark.parametrize(
    "bad", ["CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END", "SELECT json_extract(a, '$')"]
)
def test_untranslatable_statements_are_refused(bad: str) -> None:
    from choreo_cp.store.schema_postgres import translate

    with pytest.raises(NotImplementedError):
        translate(bad)


async def test_closing_twice_is_harmless_and_a_closed_store_refuses_writes(store_db: StoreDb) -> None:
    store = await seeded(store_db())
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.put_object("dp1", "Environment", "qa", "qa", ENV)
