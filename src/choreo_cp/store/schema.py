"""The store's schema and its migrations.

The schema version lives in a row of ``meta`` (``schema_version``). Migrations are numbered from 1
and each runs in its own write transaction together with the bump of that row, so a crash leaves
the database at one version or the next, never between; a migration already applied is skipped
(the version is re-read inside the transaction, so two processes opening one file apply it once).
A database written before the version row existed holds migration 1's tables: it is recognised by
its ``dataplanes`` table and stamped. A database of a newer version than this code
knows is refused rather than read with the wrong assumptions.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

VERSION_KEY = "schema_version"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


class SchemaTooNew(sqlite3.DatabaseError):
    """The database was written by a newer control plane; reading it could lose data.

    A database error like an unreadable file, so that whoever reports those (the CLI) reports this.
    """

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            f"schema version {found} is newer than this control plane knows ({known});"
            " run a newer control plane or restore a backup taken with this version"
        )
        self.path = path
        self.found = found
        self.known = known


_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# Migration 1 is the schema of the first release (written before the version row existed); a
# database from then is stamped, not migrated. Its statements stay idempotent (IF NOT EXISTS) because
# stamping runs them too. New migrations append to MIGRATIONS and never change once released.
_V1 = (
    _META,
    """CREATE TABLE IF NOT EXISTS dataplanes (
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
    )""",
    """CREATE TABLE IF NOT EXISTS objects (
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
    )""",
    "CREATE INDEX IF NOT EXISTS objects_env ON objects (dataplane, environment, kind)",
    """CREATE TABLE IF NOT EXISTS log (
        dataplane TEXT NOT NULL,
        revision INTEGER NOT NULL,
        key TEXT NOT NULL,
        op TEXT NOT NULL,
        kind TEXT NOT NULL,
        environment TEXT NOT NULL,
        name TEXT NOT NULL,
        spec_hash TEXT,
        PRIMARY KEY (dataplane, revision)
    )""",
    "CREATE INDEX IF NOT EXISTS log_key ON log (dataplane, key, revision)",
    """CREATE TABLE IF NOT EXISTS status (
        dataplane TEXT NOT NULL,
        key TEXT NOT NULL,
        status TEXT NOT NULL,
        reported_at TEXT NOT NULL,
        PRIMARY KEY (dataplane, key)
    )""",
    """CREATE TABLE IF NOT EXISTS nacks (
        dataplane TEXT NOT NULL,
        key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        retryable INTEGER NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (dataplane, key)
    )""",
)

# Migration 2 (issue 14): what the data plane actually has. The agent's inventory summary (count,
# digest, revision, when it arrived: JSON, written as one value), whether a resync is required (the
# reason; survives a restart so the next hello is answered with a resync) with the count and time of
# consecutive requests (the anti-entropy backoff), and per status whether the object was reported
# missing and when the agent observed it.
_V2 = (
    "ALTER TABLE dataplanes ADD COLUMN inventory TEXT",
    "ALTER TABLE dataplanes ADD COLUMN resync_required TEXT",
    "ALTER TABLE dataplanes ADD COLUMN resync_requests INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE dataplanes ADD COLUMN resync_requested_at TEXT",
    "ALTER TABLE status ADD COLUMN missing INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE status ADD COLUMN observed_at TEXT",
)

# Migration 3 (issue 16): the audit trail of logs/events/live requests (store/audit.py). Append-only:
# updates are refused by a trigger; rows leave only through the pruning step (age and count bounds),
# which runs with every append. ``at`` is fixed-width RFC 3339, so age pruning is a range on its index.
_V3 = (
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        who TEXT NOT NULL,
        client TEXT NOT NULL,
        dataplane TEXT NOT NULL,
        app TEXT NOT NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        status INTEGER NOT NULL,
        code TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        duration REAL NOT NULL
    )""",
    "CREATE INDEX audit_dataplane ON audit (dataplane, id)",
    "CREATE INDEX audit_at ON audit (at)",
    """CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
)

# Migration 4 (issue 17): every accepted spec of an app (store/history.py), kept apart from the
# revision log so that its compaction does not take the history with it; bounded per app by the
# store's pruning, not here. ``ran_image`` is the image the data plane reported Ready at that
# revision (with its digest): the status triggers below stamp it in the transaction that writes the
# status, so a report is never lost to a later revision overwriting the one status row. The apps
# desired at upgrade time seed the history (author unknown), and a Ready status of their current
# revision seeds what ran. Every statement is idempotent: a store stamped down to an older version
# (a restored meta row) gets migration 4 again without losing or doubling its history.
_RAN_WHEN = """json_valid(NEW.status)
        AND json_extract(NEW.status, '$.phase') = 'Ready'
        AND json_type(NEW.status, '$.revision') = 'integer'
        AND json_type(NEW.status, '$.image') = 'text'
        AND instr(json_extract(NEW.status, '$.image'), '@sha256:') > 0"""
_RAN_SET = """UPDATE history SET ran_image = json_extract(NEW.status, '$.image'), ran_at = NEW.reported_at
        WHERE dataplane = NEW.dataplane AND key = NEW.key
        AND revision = json_extract(NEW.status, '$.revision')"""
_V4 = (
    """CREATE TABLE IF NOT EXISTS history (
        dataplane TEXT NOT NULL,
        key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        environment TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        at TEXT NOT NULL,
        author TEXT,
        cause TEXT NOT NULL DEFAULT 'apply',
        rollback_of INTEGER,
        ran_image TEXT,
        ran_at TEXT,
        PRIMARY KEY (dataplane, key, revision)
    )""",
    f"""CREATE TRIGGER IF NOT EXISTS history_ran_insert AFTER INSERT ON status WHEN {_RAN_WHEN}
        BEGIN {_RAN_SET}; END""",
    f"""CREATE TRIGGER IF NOT EXISTS history_ran_update AFTER UPDATE OF status ON status WHEN {_RAN_WHEN}
        BEGIN {_RAN_SET}; END""",
    """INSERT INTO history (dataplane, key, revision, environment, name, spec, spec_hash, at)
        SELECT dataplane, key, revision, environment, name, spec, spec_hash, updated_at
        FROM objects o WHERE kind = 'ChoreoApp' AND NOT EXISTS (SELECT 1 FROM history h
            WHERE h.dataplane = o.dataplane AND h.key = o.key AND h.revision = o.revision)""",
    """UPDATE history SET
        ran_image = (SELECT json_extract(s.status, '$.image') FROM status s
                     WHERE s.dataplane = history.dataplane AND s.key = history.key),
        ran_at = (SELECT s.reported_at FROM status s
                  WHERE s.dataplane = history.dataplane AND s.key = history.key)
        WHERE EXISTS (SELECT 1 FROM status s WHERE s.dataplane = history.dataplane AND s.key = history.key
            AND json_valid(s.status)
            AND json_extract(s.status, '$.phase') = 'Ready'
            AND json_extract(s.status, '$.revision') = history.revision
            AND json_type(s.status, '$.image') = 'text'
            AND instr(json_extract(s.status, '$.image'), '@sha256:') > 0)""",
)

# Migration 5: one row per dataplane naming its current tunnel session and a fencing token, bumped
# in the transaction that registers a newer session; writes on behalf of a session are conditional
# on it, so a session another replica replaced can never overwrite the newer one's reports.
_V5 = (
    """CREATE TABLE IF NOT EXISTS sessions (
        dataplane TEXT PRIMARY KEY,
        token INTEGER NOT NULL DEFAULT 0,
        session_id TEXT,
        replica TEXT,
        remote TEXT,
        started_at TEXT,
        ended_at TEXT
    )""",
)

# Migration 6: the internal URL of each replica that holds (or held) a session, joined to the
# session row by replica name, so another replica can hand it a request for a log, event or
# live-state stream of that dataplane (docs/controlplane.md). A table rather than a column of
# sessions: migrations re-apply over a stamp, and SQLite has no ADD COLUMN IF NOT EXISTS.
_V6 = (
    """CREATE TABLE IF NOT EXISTS replicas (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        seen_at TEXT NOT NULL
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _V1),
    Migration(2, "inventory summaries, required resyncs, missing objects", _V2),
    Migration(3, "audit trail of on-demand streams", _V3),
    Migration(4, "history of accepted app specs and the images they ran", _V4),
    Migration(5, "tunnel sessions with fencing tokens (several replicas)", _V5),
    Migration(6, "the advertised URL of the replica holding a session", _V6),
)
LATEST = MIGRATIONS[-1].version


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return row is not None


def _recorded_version(conn: sqlite3.Connection) -> int | None:
    if not _table_exists(conn, "meta"):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key=?", (VERSION_KEY,)).fetchone()
    return None if row is None else int(row[0])


def schema_version(conn: sqlite3.Connection) -> int:
    """The version of the database: 0 when empty, 1 when written before the version row existed."""
    recorded = _recorded_version(conn)
    if recorded is not None:
        return recorded
    return 1 if _table_exists(conn, "dataplanes") else 0


def _stamp(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (VERSION_KEY, str(version)),
    )


def _in_transaction(conn: sqlite3.Connection, step: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        step()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database (an autocommit connection) to :data:`LATEST`; returns the version it had."""
    found = 0

    def check_and_stamp_legacy() -> None:
        nonlocal found
        found = schema_version(conn)
        if found > LATEST:
            raise SchemaTooNew(path, found, LATEST)
        if found and _recorded_version(conn) is None:
            log.info("store %s: written before schema versioning; stamping version %d", path, found)
            # The unversioned store created its tables one autocommitted statement at a time on
            # every start, so a crash could have left some missing: create them (all IF NOT EXISTS).
            for statement in MIGRATIONS[0].statements:
                conn.execute(statement)
            _stamp(conn, found)

    _in_transaction(conn, check_and_stamp_legacy)
    for migration in MIGRATIONS:

        def apply(m: Migration = migration) -> None:
            # Re-read inside the write lock: another process may have applied it meanwhile.
            if schema_version(conn) >= m.version:
                return
            log.info("store %s: migration %d (%s)", path, m.version, m.description)
            for statement in m.statements:
                conn.execute(statement)
            _stamp(conn, m.version)

        _in_transaction(conn, apply)
    return found
