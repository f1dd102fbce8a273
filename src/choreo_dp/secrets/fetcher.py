"""Reading secrets from Key Vault: one read per distinct (vault, identity, secret, version) at a time.

Every secret an app references is a :class:`SecretKey`. Its :class:`KeyState` holds the last value
read (the last-known-good), when it was read, the last error, and the in-flight read if any. Callers
asking for a key that is being read join that read (single flight); callers asking for a key read
recently enough get the cached value. Reads are bounded by one semaphore across all vaults, and
wait for the vault's throttle gate before taking a permit, so a throttled vault does not hold permits
that other vaults could use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.keyvault.secrets import KeyVaultSecretIdentifier

from choreo_dp.kube.backoff import RETRY_AFTER_CAPS, Backoff
from choreo_dp.secrets import metrics
from choreo_dp.secrets.clients import ClientPool, VaultClient, normalize_vault_url
from choreo_dp.secrets.errors import SecretFetchError, classify
from choreo_dp.secrets.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class SecretKey:
    vault_url: str
    identity: Identity
    name: str
    version: str  # "" = latest

    @classmethod
    def make(cls, vault_url: str, identity: Identity, name: str, version: str | None) -> SecretKey:
        return cls(normalize_vault_url(vault_url), identity, name, (version or "").lower())

    def describe(self) -> str:
        pinned = f" version {self.version}" if self.version else ""
        return f"secret '{self.name}'{pinned} in {self.vault_url}"


@dataclass
class Fetched:
    # repr=False: a stray log of this object must not print the value.
    value: str = field(repr=False)
    version: str


@dataclass
class KeyState:
    key: SecretKey
    interval: float
    fetched: Fetched | None = None
    fetched_at: float = 0.0  # monotonic
    error: SecretFetchError | None = None
    failures: int = 0
    next_due: float = 0.0
    inflight: asyncio.Task[Fetched] | None = None
    users: set[tuple[str, str]] = field(default_factory=set)  # (namespace, app)


# A failing secret is retried after 5 s, 10 s, 20 s ... at most 5 min (and never later than its
# refresh interval would have read it anyway).
FAILURE_BACKOFF = Backoff(base=5.0, cap=300.0)


def failure_delay(backoff: Backoff, failures: int, interval: float, retry_after: float | None) -> float:
    """Seconds until a secret that failed ``failures`` times in a row is read again.

    The shared :class:`Backoff`'s ceiling, but not its full jitter: a delay near zero would let the
    very next reconcile read a failing secret again, so at least 80% of the ceiling is waited (the
    remaining 20% still spreads the keys that failed together).  Key Vault's Retry-After is a floor,
    bounded as :meth:`Backoff.delay` bounds it.
    """
    ceiling = min(interval, backoff.ceiling(max(0, failures - 1)))
    delay = ceiling * random.uniform(0.8, 1.0)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, backoff.cap * RETRY_AFTER_CAPS))
    return delay


class SecretFetcher:
    def __init__(
        self,
        pool: ClientPool,
        *,
        max_concurrency: int = 16,
        max_gate_wait: float = 10.0,
        read_deadline: float = 30.0,
        jitter: float = 0.1,
        failure_backoff: Backoff | tuple[float, float] = FAILURE_BACKOFF,
        on_scheduled: Callable[[float], None] = lambda due: None,
    ) -> None:
        self.pool = pool
        self._jitter = jitter
        self._failure_backoff = (
            failure_backoff if isinstance(failure_backoff, Backoff) else Backoff(*failure_backoff)
        )
        self._on_scheduled = on_scheduled
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._max_gate_wait = max_gate_wait
        self._read_deadline = read_deadline
        self.states: dict[SecretKey, KeyState] = {}
        self.reads = 0  # Key Vault reads issued (for tests and the benchmark)

    def state(self, key: SecretKey, interval: float) -> KeyState:
        st = self.states.get(key)
        if st is None:
            st = KeyState(key, interval)
            self.states[key] = st
            metrics.SECRETS_TRACKED.set(len(self.states))
        else:
            st.interval = min(st.interval, interval)
        return st

    def drop(self, key: SecretKey) -> None:
        st = self.states.pop(key, None)
        if st is not None and st.inflight is not None and not st.inflight.done():
            st.inflight.cancel()
        metrics.SECRETS_TRACKED.set(len(self.states))

    async def read(self, st: KeyState) -> Fetched:
        """Read ``st.key`` now, or join the read already under way. Raises SecretFetchError."""
        if st.inflight is None or st.inflight.done():
            st.inflight = asyncio.create_task(self._read(st.key), name=f"keyvault-read:{st.key.name}")
            st.inflight.add_done_callback(functools.partial(self._record, st))
        return await asyncio.shield(st.inflight)

    def _record(self, st: KeyState, task: asyncio.Task[Fetched]) -> None:
        """Update the state as soon as the read ends, whoever (if anyone) still awaits it."""
        if task.cancelled():
            return
        exc = task.exception()
        now = time.monotonic()
        if exc is None:
            first = st.fetched is None
            st.fetched = task.result()
            st.fetched_at = now
            st.error = None
            st.failures = 0
            # The first refresh lands anywhere in the second half of the interval, so keys first read in
            # one burst (operator start) spread out; later ones keep the interval with a little jitter.
            low = 0.5 if first else 1.0 - self._jitter
            st.next_due = now + st.interval * random.uniform(low, 1.0)
        else:
            st.error = exc if isinstance(exc, SecretFetchError) else classify(exc, st.key.describe())
            st.failures += 1
            st.next_due = now + failure_delay(
                self._failure_backoff, st.failures, st.interval, st.error.retry_after
            )
        self._on_scheduled(st.next_due)

    async def _read(self, key: SecretKey) -> Fetched:
        vc = self.pool.client(key.vault_url, key.identity)
        what = key.describe()
        try:
            async with asyncio.timeout(self._read_deadline):
                if not vc.warm:
                    async with vc.warm_lock:
                        if not vc.warm:
                            result = await self._get(vc, key)
                            vc.warm = True
                            return result
                return await self._get(vc, key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = classify(exc, what)
            throttled = error.retry_after is not None
            if error.reason != "KeyVaultUnavailable" or throttled:
                # 403/404 mean the vault answered: the challenge is cached, later reads may go in parallel.
                vc.warm = True
            metrics.KEYVAULT_REQUESTS.labels(metrics.result_label(error.reason, throttled)).inc()
            log.warning("Key Vault read failed: %s", error.message)
            raise error from None

    async def _get(self, vc: VaultClient, key: SecretKey) -> Fetched:
        while True:
            # Wait for the vault's throttle window outside the semaphore (a throttled vault must not hold
            # permits other vaults could use), and look again once holding a permit: a 429 may have
            # arrived while we queued.
            wait = vc.gate.remaining()
            if wait > self._max_gate_wait:
                raise SecretFetchError(
                    "KeyVaultUnavailable",
                    f"Key Vault is throttling reads of {key.vault_url}; retry after {wait:.0f}s",
                    retry_after=wait,
                )
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._semaphore:
                if vc.gate.remaining() > 0:
                    continue
                self.reads += 1
                secret = await vc.client.get_secret(key.name, key.version or None)
                break
        metrics.KEYVAULT_REQUESTS.labels("ok").inc()
        if secret.value is None:
            raise SecretFetchError("SecretNotFound", f"{key.describe()} has no value")
        version = secret.properties.version or ""
        if not version and secret.id:
            version = KeyVaultSecretIdentifier(secret.id).version or ""
        return Fetched(secret.value, version)
