"""The dataplane bearer token, read from a file and re-read when the file changes.

Kubernetes rotates projected / secret volumes by swapping a symlink, so the check is by
(mtime, inode, size) of the resolved file on every connect and while waiting out a backoff.
"""

from __future__ import annotations

import asyncio
import os


class TokenError(Exception):
    """The token file is missing, unreadable or empty."""


class TokenFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _read_sync(self) -> tuple[tuple[int, int, int], str]:
        stamp = self._stat()
        with open(self.path, encoding="utf-8") as fh:
            token = fh.read(64 * 1024).strip()
        return stamp, token

    async def changed(self) -> bool:
        """Whether the file differs from what :meth:`read` last returned (missing counts as changed)."""
        try:
            stamp = await asyncio.to_thread(self._stat)
        except OSError:
            return True
        return stamp != self._stamp

    async def read(self) -> str:
        """The current token; re-reads the file only when it changed."""
        if self._token is not None and not await self.changed():
            return self._token
        try:
            stamp, token = await asyncio.to_thread(self._read_sync)
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read token file {self.path}: {exc}") from None
        if not token or any(c.isspace() for c in token):
            raise TokenError(f"token file {self.path} is empty or malformed")
        self._stamp, self._token = stamp, token
        return token
