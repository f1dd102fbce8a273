"""Desired objects and the revision log.

Per dataplane the store keeps an ``epoch`` (random, minted when the dataplane is first registered, so
a lost or replaced database yields a new one) and a strictly increasing ``revision`` bumped by every
change. The revision log holds one row per change (puts and deletion tombstones) and is compacted to
the newest ``log_limit`` rows; ``horizon`` is the newest revision no longer covered by the log, so
an agent at revision ``r`` can be streamed incrementally iff ``horizon <= r <= revision`` in the
same epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from choreo_cp.store.engine import Conn
from choreo_cp.store.history import History, HistoryNote, record_history
from choreo_cp.store.records import (
    KIND_APP,
    KIND_ENVIRONMENT,
    Change,
    DesiredObject,
    Kind,
    LogGap,
    Op,
    Snapshot,
    StoreError,
    WriteResult,
    canonical_json,
    not_registered,
    now_rfc3339,
    object_key,
    row_object,
)


class Revisions(History):
    """The desired-state part of the store: objects, revisions, the log and its compaction, and the
    history of accepted app specs (written with each, kept apart from the compacted log)."""

    async def put_object(
        self,
        dp: str,
        kind: Kind,
        environment: str,
        name: str,
        spec: dict[str, Any],
        *,
        check_environment: Callable[[dict[str, Any] | None], None] | None = None,
        note: HistoryNote | None = None,
    ) -> WriteResult:
        """Store a desired object; a spec identical to the stored one is not a change (no new revision).

        A changed app spec is added to the app's history with ``note`` (author, cause).

        ``check_environment`` (apps only) is called with the environment's spec, or None when the
        environment is not defined, inside the write transaction, so a rule of the environment (it
        exists, its registry allowlist) is judged against the environment as it is when the app is
        committed; whatever it raises aborts the write.
        """
        digest = self.spec_hash(spec)
        text = canonical_json(spec)
        result = await self._txn(
            lambda c: self._put_sync(
                c, dp, kind, environment, name, text, digest, check_environment, note or HistoryNote()
            ),
        )
        if result.changed:
            self._changed(dp)
        return result

    def _bump(self, conn: Conn, dp: str) -> int:
        row = conn.execute(
            "UPDATE dataplanes SET revision = revision + 1 WHERE id=? RETURNING revision", (dp,)
        ).fetchone()
        if row is None:
            raise not_registered(dp)
        return int(row[0])

    def _log(
        self,
        conn: Conn,
        dp: str,
        rev: int,
        op: Op,
        key: str,
        kind: str,
        env: str,
        name: str,
        digest: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO log(dataplane, revision, key, op, kind, environment, name, spec_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (dp, rev, key, op, kind, env, name, digest),
        )

    def _current_revision(self, conn: Conn, dp: str) -> int:
        # Every desired-state write starts here: on PostgreSQL the row lock makes the writers of one
        # dataplane (any connection, any replica) take their revisions one after another.
        row = conn.execute(
            "SELECT revision FROM dataplanes WHERE id=?" + self.dialect.lock_row, (dp,)
        ).fetchone()
        if row is None:
            raise not_registered(dp)
        return int(row[0])

    def _put_sync(
        self,
        conn: Conn,
        dp: str,
        kind: Kind,
        env: str,
        name: str,
        text: str,
        digest: str,
        check_environment: Callable[[dict[str, Any] | None], None] | None = None,
        note: HistoryNote | None = None,
    ) -> WriteResult:
        current = self._current_revision(conn, dp)
        key = object_key(kind, env, name)
        if kind == KIND_APP:
            parent = conn.execute(
                "SELECT spec FROM objects WHERE dataplane=? AND key=?",
                (dp, object_key(KIND_ENVIRONMENT, env, env)),
            ).fetchone()
            if check_environment is not None:
                check_environment(None if parent is None else json.loads(parent["spec"]))
            if parent is None:
                raise StoreError("not_found", f"environment {env!r} is not defined on dataplane {dp!r}")
        row = conn.execute(
            "SELECT spec_hash, revision FROM objects WHERE dataplane=? AND key=?", (dp, key)
        ).fetchone()
        if row is not None and row["spec_hash"] == digest:
            return WriteResult(current, False, row["revision"], digest)
        rev = self._bump(conn, dp)
        conn.execute(
            "INSERT INTO objects(dataplane, key, kind, environment, name, spec, spec_hash, revision, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(dataplane, key) DO UPDATE SET spec=excluded.spec, spec_hash=excluded.spec_hash,"
            " revision=excluded.revision, updated_at=excluded.updated_at",
            (dp, key, kind, env, name, text, digest, rev, now_rfc3339()),
        )
        self._log(conn, dp, rev, "put", key, kind, env, name, digest)
        if kind == KIND_APP:
            record_history(
                conn,
                dp=dp,
                key=key,
                revision=rev,
                environment=env,
                name=name,
                spec_text=text,
                spec_hash=digest,
                note=note or HistoryNote(),
                limit=self.history_limit,
            )
        # A new spec makes any refusal of the old one history.
        conn.execute("DELETE FROM nacks WHERE dataplane=? AND key=?", (dp, key))
        self._compact(conn, dp, rev)
        return WriteResult(rev, True, rev, digest)

    async def delete_object(self, dp: str, kind: Kind, environment: str, name: str) -> WriteResult:
        """Delete a desired object (an Environment takes its apps with it, each its own revision)."""
        result = await self._txn(lambda c: self._delete_sync(c, dp, kind, environment, name))
        for key in result.removed:
            self._pending.unqueue_status(dp, key)
        self._changed(dp)
        return result

    def _delete_sync(self, conn: Conn, dp: str, kind: Kind, env: str, name: str) -> WriteResult:
        self._current_revision(conn, dp)
        key = object_key(kind, env, name)
        if conn.execute("SELECT 1 FROM objects WHERE dataplane=? AND key=?", (dp, key)).fetchone() is None:
            what = "environment" if kind == KIND_ENVIRONMENT else "app"
            where = f" in environment {env!r}" if kind == KIND_APP else ""
            raise StoreError("not_found", f"{what} {name!r}{where} is not defined on dataplane {dp!r}")
        victims: list[tuple[str, str, str, str]] = []
        if kind == KIND_ENVIRONMENT:
            # Apps first, so a replaying agent never sees an app outlive its environment.
            for r in conn.execute(
                "SELECT key, kind, environment, name FROM objects WHERE dataplane=? AND kind=? AND environment=?"
                " ORDER BY name",
                (dp, KIND_APP, env),
            ).fetchall():
                victims.append((r["key"], r["kind"], r["environment"], r["name"]))
        victims.append((key, kind, env, name))
        rev = 0
        for vkey, vkind, venv, vname in victims:
            rev = self._bump(conn, dp)
            conn.execute("DELETE FROM objects WHERE dataplane=? AND key=?", (dp, vkey))
            conn.execute("DELETE FROM status WHERE dataplane=? AND key=?", (dp, vkey))
            conn.execute("DELETE FROM nacks WHERE dataplane=? AND key=?", (dp, vkey))
            self._log(conn, dp, rev, "delete", vkey, vkind, venv, vname, None)
        self._compact(conn, dp, rev)
        return WriteResult(rev, True, None, None, [v[0] for v in victims])

    def _compact(self, conn: Conn, dp: str, rev: int) -> None:
        """Keep the newest ``log_limit`` entries; compacting in steps of 1/8 keeps deletes rare."""
        row = conn.execute("SELECT horizon FROM dataplanes WHERE id=?", (dp,)).fetchone()
        horizon = int(row[0])
        slack = max(1, self.log_limit // 8)
        if rev - horizon <= self.log_limit + slack:
            return
        new_horizon = rev - self.log_limit
        conn.execute("DELETE FROM log WHERE dataplane=? AND revision<=?", (dp, new_horizon))
        conn.execute("UPDATE dataplanes SET horizon=? WHERE id=?", (new_horizon, dp))

    async def get_object(self, dp: str, kind: Kind, environment: str, name: str) -> DesiredObject | None:
        key = object_key(kind, environment, name)

        def read() -> DesiredObject | None:
            row = self._db.execute("SELECT * FROM objects WHERE dataplane=? AND key=?", (dp, key)).fetchone()
            return None if row is None else row_object(row)

        return await self._call(read)

    async def list_objects(
        self, dp: str, *, kind: Kind | None = None, environment: str | None = None
    ) -> list[DesiredObject]:
        sql = "SELECT * FROM objects WHERE dataplane=?"
        params: list[Any] = [dp]
        if kind is not None:
            sql += " AND kind=?"
            params.append(kind)
        if environment is not None:
            sql += " AND environment=?"
            params.append(environment)
        sql += " ORDER BY revision"
        rows = await self._call(lambda: self._db.execute(sql, params).fetchall())
        return [row_object(r) for r in rows]

    async def get_objects(self, dp: str, keys: Iterable[str]) -> list[DesiredObject]:
        """The current objects for the given keys (missing keys are skipped), in revision order."""
        wanted = list(keys)

        def read() -> list[DesiredObject]:
            out: list[DesiredObject] = []
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT * FROM objects WHERE dataplane=? AND key IN ({marks})", [dp, *chunk]
                ).fetchall()
                out.extend(row_object(r) for r in rows)
            out.sort(key=lambda o: o.revision)
            return out

        return await self._call(read)

    async def inventory(self, dp: str) -> dict[str, tuple[str, int]]:
        """key -> (spec hash, revision) of every desired object of a dataplane."""
        rows = await self._call(
            lambda: self._db.execute(
                "SELECT key, spec_hash, revision FROM objects WHERE dataplane=?", (dp,)
            ).fetchall()
        )
        return {r["key"]: (r["spec_hash"], r["revision"]) for r in rows}

    async def changes_since(self, dp: str, since: int, limit: int = 500) -> list[Change]:
        """The newest change of each key changed after ``since``, in revision order, at most ``limit``.

        Superseded entries are skipped (a put followed by another put or a delete travels once). The
        caller must check ``since >= horizon`` first; below the horizon the log is incomplete.
        """

        def read() -> list[Change]:
            head = self._db.execute("SELECT horizon FROM dataplanes WHERE id=?", (dp,)).fetchone()
            if head is None:
                raise not_registered(dp)
            if since < int(head[0]):
                raise LogGap(since, int(head[0]))
            rows = self._db.execute(
                "SELECT l.revision, l.op, l.key, l.kind, l.environment, l.name, o.spec, o.spec_hash"
                " FROM log l LEFT JOIN objects o ON o.dataplane = l.dataplane AND o.key = l.key"
                " WHERE l.dataplane=? AND l.revision>?"
                " AND NOT EXISTS (SELECT 1 FROM log n WHERE n.dataplane=l.dataplane AND n.key=l.key"
                "                 AND n.revision>l.revision)"
                " ORDER BY l.revision LIMIT ?",
                (dp, since, limit),
            ).fetchall()
            out: list[Change] = []
            for r in rows:
                put = r["op"] == "put"
                out.append(
                    Change(
                        revision=r["revision"],
                        op="put" if put else "delete",
                        key=r["key"],
                        kind=r["kind"],
                        environment=r["environment"],
                        name=r["name"],
                        spec=json.loads(r["spec"]) if put and r["spec"] is not None else None,
                        spec_hash=r["spec_hash"] if put else None,
                    )
                )
            return out

        return await self._call(read)

    async def snapshot(self, dp: str) -> Snapshot:
        """Epoch, revision and key -> hash, read together (one call on the store thread is atomic)."""

        def read() -> Snapshot:
            head = self._db.execute("SELECT epoch, revision FROM dataplanes WHERE id=?", (dp,)).fetchone()
            if head is None:
                raise not_registered(dp)
            rows = self._db.execute("SELECT key, spec_hash FROM objects WHERE dataplane=?", (dp,)).fetchall()
            return Snapshot(head["epoch"], int(head["revision"]), {r[0]: r[1] for r in rows})

        return await self._call(read)
