"""The store on both engines (SQLite, PostgreSQL): revisions, the log and its horizon, hashed tokens,
persistence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from choreo_cp.store import LogGap, Store, StoreError, hash_token
from choreo_wire import protocol as p

ENV = {"production": False}

StoreDb = Callable[..., str]


def stored_bytes(db: str) -> bytes:
    """Everything the database holds about its dataplanes: SQLite's files, PostgreSQL's rows."""
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT string_agg(d::text, '') FROM dataplanes d").fetchone()
        return str(row[0] if row else "").encode()
    return b"".join(f.read_bytes() for f in sorted(Path(db).parent.glob(Path(db).name + "*")))


def app(image: str = "ghcr.io/acme/a:1") -> dict[str, object]:
    return {"environment": "dev", "project": "p", "type": "service", "image": image}


async def test_revision_strictly_increases_and_identical_put_is_no_change(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        seen = []
        seen.append((await store.put_object("dp1", "Environment", "dev", "dev", ENV)).revision)
        seen.append((await store.put_object("dp1", "ChoreoApp", "dev", "a", app())).revision)
        same = await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        assert not same.changed and same.revision == seen[-1]
        seen.append(
            (await store.put_object("dp1", "ChoreoApp", "dev", "a", app("ghcr.io/acme/a:2"))).revision
        )
        seen.append((await store.delete_object("dp1", "ChoreoApp", "dev", "a")).revision)
        assert seen == sorted(set(seen)) and seen[0] == 1
        record = await store.get_dataplane("dp1")
        assert record is not None and record.revision == seen[-1]


async def test_spec_hash_is_the_protocol_hash(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        result = await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        assert result.spec_hash == p.spec_hash(ENV)


async def test_app_needs_its_environment_and_unknown_dataplane_is_not_found(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        with pytest.raises(StoreError) as exc:
            await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        assert exc.value.code == "not_found" and "environment 'dev'" in exc.value.message
        with pytest.raises(StoreError):
            await store.put_object("nope", "Environment", "dev", "dev", ENV)
        record = await store.get_dataplane("dp1")
        assert record is not None and record.revision == 0  # refused writes leave no trace


async def test_environment_delete_takes_apps_first_each_with_a_revision(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        await store.put_object("dp1", "ChoreoApp", "dev", "b", app())
        result = await store.delete_object("dp1", "Environment", "dev", "dev")
        assert result.removed == ["ChoreoApp/dev/a", "ChoreoApp/dev/b", "Environment/dev"]
        assert result.revision == 6
        changes = await store.changes_since("dp1", 3)
        assert [(c.revision, c.op, c.key) for c in changes] == [
            (4, "delete", "ChoreoApp/dev/a"),
            (5, "delete", "ChoreoApp/dev/b"),
            (6, "delete", "Environment/dev"),
        ]
        assert await store.list_objects("dp1") == []


async def test_changes_since_sends_each_key_once_newest_wins(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)  # 1
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app("ghcr.io/acme/a:1"))  # 2
        await store.put_object("dp1", "ChoreoApp", "dev", "b", app())  # 3
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app("ghcr.io/acme/a:2"))  # 4
        await store.delete_object("dp1", "ChoreoApp", "dev", "b")  # 5
        changes = await store.changes_since("dp1", 0)
        assert [(c.revision, c.op, c.key) for c in changes] == [
            (1, "put", "Environment/dev"),
            (4, "put", "ChoreoApp/dev/a"),
            (5, "delete", "ChoreoApp/dev/b"),
        ]
        put_a = changes[1]
        assert put_a.spec is not None and put_a.spec["image"] == "ghcr.io/acme/a:2"
        assert put_a.spec_hash == p.spec_hash(put_a.spec)
        assert await store.changes_since("dp1", 5) == []
        assert [c.revision for c in await store.changes_since("dp1", 0, limit=2)] == [1, 4]


async def test_log_is_compacted_and_older_revisions_hit_the_horizon(store_db: StoreDb) -> None:
    async with Store(store_db(), log_limit=8) as store:
        await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        for i in range(30):
            await store.put_object("dp1", "ChoreoApp", "dev", f"a{i % 3}", app(f"ghcr.io/acme/a:{i}"))
        record = await store.get_dataplane("dp1")
        assert record is not None and record.revision == 31
        assert 0 < record.horizon <= 31 - 8  # at least log_limit entries kept
        with pytest.raises(LogGap):
            await store.changes_since("dp1", record.horizon - 1)
        tail = await store.changes_since("dp1", record.horizon)
        assert tail and tail[-1].revision == 31
        # the compacted log still replays to the same current state
        current = {o.key: o.spec_hash for o in await store.list_objects("dp1", kind="ChoreoApp")}
        replayed = {c.key: c.spec_hash for c in await store.changes_since("dp1", 28)}
        assert all(current[k] == h for k, h in replayed.items())


async def test_tokens_are_stored_hashed_and_rotation_is_explicit(store_db: StoreDb) -> None:
    db = store_db()
    async with Store(db) as store:
        record, token, created = await store.register_dataplane("dp1")
        assert created and token is not None
        again, no_token, created_again = await store.register_dataplane("dp1")
        assert not created_again and no_token is None and again.epoch == record.epoch
        assert await store.authenticate_dataplane(token) == "dp1"
        _, rotated, _ = await store.register_dataplane("dp1", rotate_token=True)
        assert rotated is not None and rotated != token
        assert await store.authenticate_dataplane(token) is None
        assert await store.authenticate_dataplane(rotated) == "dp1"
    raw = stored_bytes(db)
    assert token.encode() not in raw and rotated.encode() not in raw
    assert hash_token(rotated).encode() in raw


async def test_state_survives_reopen(store_db: StoreDb) -> None:
    db = store_db()
    async with Store(db) as store:
        record, token, _ = await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        store.queue_status("dp1", "ChoreoApp/dev/a", {"phase": "Ready"})
        store.queue_applied("dp1", 2, record.epoch)
    async with Store(db) as store:
        again = await store.get_dataplane("dp1")
        assert again is not None
        assert (again.epoch, again.revision, again.applied_revision) == (record.epoch, 2, 2)
        assert token is not None and await store.authenticate_dataplane(token) == "dp1"
        status = await store.get_status("dp1", "ChoreoApp/dev/a")
        assert status is not None and status.status == {"phase": "Ready"}
        assert (await store.put_object("dp1", "ChoreoApp", "dev", "b", app())).revision == 3


async def test_a_new_store_means_a_new_epoch(store_db: StoreDb) -> None:
    async with Store(store_db("one")) as one, Store(store_db("two")) as two:
        a, _, _ = await one.register_dataplane("dp1")
        b, _, _ = await two.register_dataplane("dp1")
        assert a.epoch != b.epoch


async def test_status_coalesces_and_never_outlives_its_object(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        for phase in ("Pending", "Progressing", "Ready"):
            store.queue_status("dp1", "ChoreoApp/dev/a", {"phase": phase})
        store.queue_status("dp1", "ChoreoApp/dev/ghost", {"phase": "Ready"})
        assert await store.flush() == 1  # one row: newest wins, the unknown key is dropped
        status = await store.get_status("dp1", "ChoreoApp/dev/a")
        assert status is not None and status.status["phase"] == "Ready"
        assert await store.get_status("dp1", "ChoreoApp/dev/ghost") is None
        await store.delete_object("dp1", "ChoreoApp", "dev", "a")
        assert await store.get_status("dp1", "ChoreoApp/dev/a") is None


async def test_snapshot_is_consistent(store_db: StoreDb) -> None:
    async with Store(store_db()) as store:
        record, _, _ = await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV)
        await store.put_object("dp1", "ChoreoApp", "dev", "a", app())
        snap = await store.snapshot("dp1")
        assert snap.epoch == record.epoch and snap.revision == 2
        assert snap.hashes == {"Environment/dev": p.spec_hash(ENV), "ChoreoApp/dev/a": p.spec_hash(app())}
