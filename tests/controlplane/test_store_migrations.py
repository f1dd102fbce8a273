"""The store's schema version row and migrations: legacy databases are stamped and keep their data,
a fresh one starts at the newest version, and a newer one than the code knows is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from choreo_cp.store import SCHEMA_VERSION, SchemaTooNew, Store, hash_token, object_key

# The DDL of the store before it had a schema version (choreo_dp/controlplane/store.py, issue 12),
# copied verbatim: a database written by that code is exactly this plus its rows.
LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataplanes (
    id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    horizon INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    token_rotated_at TEXT,
    applied_revision INTEGER,
    applied_epoch TEXT,
    last_heartbeat TEXT,
    last_connected TEXT,
    last_disconnected TEXT,
    agent TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS objects (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
CREATE INDEX IF NOT EXISTS objects_env ON objects (dataplane, environment, kind);
CREATE TABLE IF NOT EXISTS log (
    dataplane TEXT NOT NULL,
    revision INTEGER NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    spec_hash TEXT,
    PRIMARY KEY (dataplane, revision)
);
CREATE INDEX IF NOT EXISTS log_key ON log (dataplane, key, revision);
CREATE TABLE IF NOT EXISTS status (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
CREATE TABLE IF NOT EXISTS nacks (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    revision INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    retryable INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
"""

TOKEN = "cpdp_legacy-token"
ENV_KEY = object_key("Environment", "dev", "dev")
APP_KEY = object_key("ChoreoApp", "dev", "shop")
T0 = "2026-01-01T00:00:00.000000Z"


def write_legacy_database(path: Path) -> None:
    """Two revisions on dp1 (an Environment, then an app), a status, a refusal, as the old code left them."""
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_DDL)
    conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', 'legacy-store')")
    conn.execute(
        "INSERT INTO dataplanes(id, epoch, revision, horizon, token_hash, created_at, applied_revision,"
        " applied_epoch, agent) VALUES ('dp1', 'e1', 2, 0, ?, ?, 2, 'e1', '{\"version\":\"0.9\"}')",
        (hash_token(TOKEN), T0),
    )
    rows = [
        (ENV_KEY, "Environment", "dev", "dev", '{"displayName":"Dev"}', "h-env", 1),
        (
            APP_KEY,
            "ChoreoApp",
            "dev",
            "shop",
            '{"environment":"dev","image":"ghcr.io/acme/shop:1"}',
            "h-app",
            2,
        ),
    ]
    for key, kind, env, name, spec, digest, rev in rows:
        conn.execute(
            "INSERT INTO objects VALUES ('dp1', ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, kind, env, name, spec, digest, rev, T0),
        )
        conn.execute(
            "INSERT INTO log VALUES ('dp1', ?, ?, 'put', ?, ?, ?, ?)", (rev, key, kind, env, name, digest)
        )
    conn.execute("INSERT INTO status VALUES ('dp1', ?, '{\"phase\":\"Ready\"}', ?)", (APP_KEY, T0))
    conn.execute("INSERT INTO nacks VALUES ('dp1', ?, 2, 'Invalid', 'no', 0, ?)", (APP_KEY, T0))
    conn.commit()
    conn.close()


def recorded_version(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


async def test_fresh_database_starts_at_the_newest_version(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db):
        pass
    assert recorded_version(db) == str(SCHEMA_VERSION)


async def test_database_of_the_unversioned_store_is_stamped_and_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    write_legacy_database(db)
    assert recorded_version(db) is None

    for _ in range(2):  # and opening it again changes nothing (migrations are idempotent)
        async with Store(db) as store:
            assert store.store_id == "legacy-store"
            assert await store.authenticate_dataplane(TOKEN) == "dp1"
            record = await store.get_dataplane("dp1")
            assert record is not None
            assert (record.epoch, record.revision, record.objects) == ("e1", 2, 2)
            assert (record.applied_revision, record.agent) == (2, {"version": "0.9"})
            changes = await store.changes_since("dp1", 0)
            assert [(c.revision, c.key, c.spec_hash) for c in changes] == [
                (1, ENV_KEY, "h-env"),
                (2, APP_KEY, "h-app"),
            ]
            [report] = await store.object_reports("dp1", kind="ChoreoApp", environment="dev")
            assert report.object.spec == {"environment": "dev", "image": "ghcr.io/acme/shop:1"}
            assert report.status is not None and report.status.status == {"phase": "Ready"}
            assert report.nack is not None and report.nack.code == "Invalid"
        assert recorded_version(db) == str(SCHEMA_VERSION)

    async with Store(db) as store:  # and it keeps working: the next change is revision 3
        result = await store.put_object(
            "dp1", "ChoreoApp", "dev", "shop", {"environment": "dev", "image": "x:2"}
        )
        assert (result.revision, result.changed) == (3, True)


async def test_a_newer_schema_than_the_code_knows_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db) as store:
        await store.register_dataplane("dp1")
    newer = SCHEMA_VERSION + 1
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(newer),))
    conn.commit()
    conn.close()

    with pytest.raises(
        SchemaTooNew,
        match=rf"schema version {newer} is newer than this control plane knows \({SCHEMA_VERSION}\)",
    ):
        await Store(db).open()
    assert recorded_version(db) == str(newer)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id FROM dataplanes").fetchall() == [("dp1",)]
    conn.close()


async def test_stamping_creates_what_a_crashed_unversioned_start_left_out(tmp_path: Path) -> None:
    # The unversioned store created its tables one autocommitted statement at a time on every start.
    db = tmp_path / "cp.db"
    write_legacy_database(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE nacks")
        conn.execute("DROP INDEX log_key")
    conn.close()
    async with Store(db) as store:
        assert await store.record_nack("dp1", APP_KEY, 2, "Invalid", "again", False)
        nack = await store.get_nack("dp1", APP_KEY)
        assert nack is not None and nack.message == "again"
    with sqlite3.connect(db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert "log_key" in indexes
    assert recorded_version(db) == str(SCHEMA_VERSION)
