"""Anti-entropy: put back what another writer deleted or changed among the agent's objects.

Fed by the managed-objects watch (:mod:`choreo_dp.agent.statusreport`): a DELETED key the desired
copy still holds, or an object whose spec no longer matches its desired spec, is noticed here and
re-applied through :meth:`ClusterStore.restore` (the same guards and conditional write as a put
from the control plane). It runs whether or not a session is up, so while disconnected the copy
is the source; at start, once the watch has listed, every desired key is checked.

A writer that keeps changing an object back (another controller, a GitOps tool) must not meet a hot
loop: each key has its own backoff, growing with every restore it needed within ``calm`` seconds.
``pending`` holds at most one entry per key, so it is bounded by the number of desired keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from choreo_dp.agent.cluster import ApplyRefused, ClusterStore, NotYetApplicable
from choreo_dp.kube.backoff import Backoff, is_retryable

log = logging.getLogger(__name__)

RESTORES = Counter(
    "choreo_agent_restores_total",
    "objects put back to their desired spec after another writer deleted or changed them",
    ["kind", "outcome"],
)

# Between restores of one key: the first is immediate, then up to this ceiling.
RESTORE_BACKOFF = Backoff(base=1.0, cap=60.0)
# A key that needed no restore for this long starts its backoff over.
CALM = 120.0


@dataclass
class _Track:
    restores: int = 0
    last: float = 0.0


class Restorer:
    def __init__(
        self, store: ClusterStore, *, backoff: Backoff = RESTORE_BACKOFF, calm: float = CALM
    ) -> None:
        self.store = store
        self.backoff = backoff
        self.calm = calm
        self.pending: dict[str, float] = {}  # key -> when it may be restored (loop time)
        self.tracks: dict[str, _Track] = {}
        self.restored = 0  # for tests and introspection
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()  # set once the first full check is done

    # --- intake (the watch) ------------------------------------------------------------------

    def notice(self, key: str) -> None:
        """Something about ``key`` changed in the cluster: look at it soon (the check is in run)."""
        if key not in self.store.desired or key in self.pending:
            return
        self.pending[key] = self._due(key)
        self.wake.set()

    def check_all(self) -> None:
        """Every desired key missing from the cluster or not matching: after a (re)list, at start."""
        for key in self.store.desired:
            m = self.store.index.get(key)
            if m is None or not self.store.matches_desired(m):
                self.notice(key)

    def _due(self, key: str) -> float:
        now = asyncio.get_running_loop().time()
        track = self.tracks.get(key)
        if track is None or now - track.last > self.calm:
            return now
        return track.last + self.backoff.ceiling(track.restores - 1)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, synced: asyncio.Event) -> None:
        """Supervised: wait until the watch has listed (the index is the cluster), then restore."""
        await synced.wait()
        self.check_all()
        self.ready.set()
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = sorted(
                (k for k, t in self.pending.items() if t <= now),
                key=lambda k: (not k.startswith("Environment/"), k),  # an app needs its Environment
            )
            for key in due:
                del self.pending[key]
                await self._restore(key)
            self.wake.clear()
            wait = max(0.0, min(self.pending.values()) - loop.time()) if self.pending else self.calm
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), wait)
            self._forget_calm_tracks()

    async def _restore(self, key: str) -> None:
        kind = key.split("/", 1)[0]
        try:
            what = await self.store.restore(key)
        except (ApplyRefused, NotYetApplicable) as exc:
            RESTORES.labels(kind, "refused").inc()
            log.warning("cannot restore %s: %s; trying again later", key, exc)
            self._again(key)
            return
        except Exception as exc:
            if not is_retryable(exc):
                raise
            RESTORES.labels(kind, "failed").inc()
            log.warning("cannot restore %s yet: %s", key, exc)
            self._again(key)
            return
        if what is None:
            return
        self.restored += 1
        RESTORES.labels(kind, "restored").inc()
        track = self.tracks.setdefault(key, _Track())
        track.restores += 1
        track.last = asyncio.get_running_loop().time()
        if track.restores > 1:
            log.warning(
                "restored %s to its desired spec (%s), %d times in a row: another writer keeps "
                "changing it; next restore not before %.0fs",
                key,
                what,
                track.restores,
                self.backoff.ceiling(track.restores - 1),
            )
        else:
            log.warning("restored %s to its desired spec (%s)", key, what)

    def _again(self, key: str) -> None:
        track = self.tracks.setdefault(key, _Track())
        track.restores += 1
        track.last = asyncio.get_running_loop().time()
        self.notice(key)

    def _forget_calm_tracks(self) -> None:
        now = asyncio.get_running_loop().time()
        for key in [k for k, t in self.tracks.items() if now - t.last > self.calm]:
            del self.tracks[key]
