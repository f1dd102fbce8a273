"""Dataplanes and their tokens: registration, token rotation, authentication, removal."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sqlite3

from choreo_cp.store.core import StoreCore
from choreo_cp.store.engine import Conn
from choreo_cp.store.records import Dataplane, not_registered, now_rfc3339, row_dataplane

TOKEN_PREFIX = "cpdp_"


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so a plain sha256 (no salt, no stretching) is sufficient."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_epoch() -> str:
    return secrets.token_hex(8)


def dataplane_or_none(conn: Conn, dp: str) -> Dataplane | None:
    row = conn.execute("SELECT * FROM dataplanes WHERE id=?", (dp,)).fetchone()
    if row is None:
        return None
    count = conn.execute("SELECT COUNT(*) FROM objects WHERE dataplane=?", (dp,)).fetchone()[0]
    return row_dataplane(row, count)


def existing_dataplane(conn: Conn, dp: str) -> Dataplane:
    found = dataplane_or_none(conn, dp)
    if found is None:
        raise not_registered(dp)
    return found


class Dataplanes(StoreCore):
    """The dataplane registry part of the store."""

    async def register_dataplane(
        self, dp: str, *, rotate_token: bool = False
    ) -> tuple[Dataplane, str | None, bool]:
        """Create a dataplane (new epoch, new token) or return the existing one.

        Returns (dataplane, token or None, created). The raw token is only returned when it was
        minted by this call; only its hash is stored.
        """

        def tx(conn: Conn) -> tuple[Dataplane, str | None, bool]:
            minted = new_token()
            token: str | None = minted
            # An insert that may find the row there already: two replicas registering one dataplane
            # at once both succeed, and exactly one of them mints its token and epoch.
            created = (
                conn.execute(
                    "INSERT INTO dataplanes(id, epoch, token_hash, created_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(id) DO NOTHING RETURNING id",
                    (dp, new_epoch(), hash_token(minted), now_rfc3339()),
                ).fetchone()
                is not None
            )
            if not created:
                token = None
            if not created and rotate_token:
                token = new_token()
                conn.execute(
                    "UPDATE dataplanes SET token_hash=?, token_rotated_at=? WHERE id=?",
                    (hash_token(token), now_rfc3339(), dp),
                )
            return existing_dataplane(conn, dp), token, created

        return await self._txn(tx)

    async def _flush_for_read(self) -> None:
        """Write pending reports so a read sees them; a locked database must not fail the read too
        (WAL readers are not blocked): it then shows what is committed, the reports stay queued."""
        with contextlib.suppress(sqlite3.OperationalError):
            await self.flush()

    async def get_dataplane(self, dp: str) -> Dataplane | None:
        await self._flush_for_read()
        return await self._call(lambda: dataplane_or_none(self._db, dp))

    async def list_dataplanes(self) -> list[Dataplane]:
        await self._flush_for_read()

        def read() -> list[Dataplane]:
            counts = dict(
                self._db.execute("SELECT dataplane, COUNT(*) FROM objects GROUP BY dataplane").fetchall()
            )
            rows = self._db.execute("SELECT * FROM dataplanes ORDER BY id").fetchall()
            return [row_dataplane(r, counts.get(r["id"], 0)) for r in rows]

        return await self._call(read)

    async def authenticate_dataplane(self, token: str) -> str | None:
        """The dataplane id the token belongs to, or None."""
        digest = hash_token(token)
        row = await self._call(
            lambda: self._db.execute("SELECT id FROM dataplanes WHERE token_hash=?", (digest,)).fetchone()
        )
        return None if row is None else str(row["id"])

    async def delete_dataplane(self, dp: str) -> bool:
        def tx(conn: Conn) -> bool:
            gone = bool(conn.execute("DELETE FROM dataplanes WHERE id=?", (dp,)).rowcount > 0)
            for table in ("objects", "log", "status", "nacks"):
                conn.execute(f"DELETE FROM {table} WHERE dataplane=?", (dp,))
            return gone

        self._pending.drop(dp)
        return await self._txn(tx)

    async def mark_connection(self, dp: str, connected: bool) -> None:
        column = "last_connected" if connected else "last_disconnected"
        await self._txn(
            lambda c: c.execute(f"UPDATE dataplanes SET {column}=? WHERE id=?", (now_rfc3339(), dp)),
        )
