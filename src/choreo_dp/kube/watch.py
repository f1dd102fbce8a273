"""A watch that never silently stops: list, then watch from the list's version, forever.

The informer pattern of client-go's reflector, trimmed to what the product needs:

- the first pass lists (paginated, see ``KubeClient.list``) and yields :class:`Listed`, the whole
  truth for the selection at one resourceVersion; the consumer replaces what it knew;
- then it watches from that version and yields :class:`Changed` for every ADDED, MODIFIED and
  DELETED; BOOKMARKs only move the version on;
- when the server ends a watch (its ``timeoutSeconds``) or the connection drops, it watches again
  from the last version seen, so nothing is missed and nothing is listed twice;
- when that version is too old (HTTP 410, or a 200 whose stream carries an ERROR event with code
  410, which is how kube-apiserver's watch cache says it) or an event is too large to read, it
  lists again and yields a fresh :class:`Listed`;
- any other failure (connection errors, timeouts, 429, 5xx, and 401/403/404 too, since RBAC
  and CRDs can be fixed while we wait) is logged and retried after ``Backoff.delay``, forever.

An unexpected exception (a bug) is not swallowed: it ends the iteration by propagating. The
counters on the stream (``failures``, ``last_error``, ``lists``) let a supervisor or a health
check see a stream that keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.client import KubeClient
from choreo_dp.kube.errors import ApiError, WatchEventTooLarge
from choreo_dp.kube.resources import Resource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listed:
    """A full (re)list: every object of the selection at ``resource_version``."""

    items: list[dict[str, Any]]
    resource_version: str


@dataclass(frozen=True, slots=True)
class Changed:
    """One watch event: ``type`` is ADDED, MODIFIED or DELETED."""

    type: str
    object: dict[str, Any]


WatchEvent = Listed | Changed


class WatchStream:
    """``async for event in WatchStream(kube, R.CONFIGMAPS, "ns"):`` yields Listed, then Changed...

    ``resource_version``: start by watching from this version instead of listing (a consumer
    that kept its state across a restart); a 410 then lists as usual.
    """

    def __init__(
        self,
        kube: KubeClient,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        *,
        resource_version: str | None = None,
        backoff: Backoff | None = None,
        timeout_seconds: int = 300,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.resource_version = resource_version or ""
        self.backoff = backoff or kube.backoff
        self.timeout_seconds = timeout_seconds
        self._sleep = sleep
        # Consecutive failures since the last list or event; 0 when healthy.
        self.failures = 0
        self.last_error: BaseException | None = None
        self.lists = 0
        self.watches = 0

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._run()

    async def _run(self) -> AsyncIterator[WatchEvent]:
        must_list = not self.resource_version
        # 410s in a row with nothing read between them: the first relists at once, the rest wait
        # (a server whose fresh versions are already too old must not be hammered).
        gone_streak = 0
        while True:
            retry_after: float | None = None
            try:
                if must_list:
                    items, rv = await self.kube.list(
                        self.res, self.namespace, label_selector=self.label_selector
                    )
                    self.resource_version = rv
                    self.lists += 1
                    must_list = False
                    self._recovered()
                    yield Listed(items, rv)
                self.watches += 1
                events = self.kube.watch(
                    self.res,
                    self.namespace,
                    label_selector=self.label_selector,
                    resource_version=self.resource_version,
                    timeout_seconds=self.timeout_seconds,
                )
                async with contextlib.aclosing(events):
                    async for etype, obj in events:
                        seen = (obj.get("metadata") or {}).get("resourceVersion")
                        if isinstance(seen, str) and seen:
                            self.resource_version = seen
                        self._recovered()
                        gone_streak = 0
                        if etype != "BOOKMARK":
                            yield Changed(etype, obj)
                # The server ended the watch (timeoutSeconds): resume from where we are, now.
                continue
            except WatchEventTooLarge as exc:
                # Resuming would meet the same event again; a list reads objects whole.
                must_list = True
                self._failed(exc)
            except ApiError as exc:
                if exc.gone:
                    must_list = True
                    gone_streak += 1
                    log.info("%s: resourceVersion %s is gone, relisting", self._what(), self.resource_version)
                    if gone_streak == 1:
                        continue
                    self._failed(exc)
                else:
                    retry_after = exc.retry_after
                    self._failed(exc)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # ValueError: a line that is not JSON (a connection cut mid-event).
                self._failed(exc)
            await self._sleep(self.backoff.delay(self.failures - 1, retry_after))

    def _what(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"watch of {self.res.plural}{where}"

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = exc
        log.warning("%s failed (%d in a row), retrying: %s", self._what(), self.failures, exc)

    def _recovered(self) -> None:
        if self.failures:
            log.info("%s recovered after %d failures", self._what(), self.failures)
        self.failures = 0
