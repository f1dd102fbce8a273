"""Keeps each ChoreoApp's Kubernetes Secret in step with Key Vault.

Two paths write the Secret:
- ``sync_app`` (called by the operator on reconcile): registers the app's secret references, reads
  only the ones never read or overdue, writes the Secret when its content would change, and returns
  the ``SecretsSynced`` condition plus the hash to stamp on the pod template.
- the refresh loop (``start``): re-reads each distinct secret when its interval (with jitter) is due,
  and for apps whose values changed rewrites the Secret and sets ``choreo.dev/secrets-hash`` on the
  ChoreoApp, which wakes the operator to roll the workload. On failure the Secret is left as it is
  (last known good), a Warning Event is posted, and ``choreo.dev/secrets-state`` is set so the
  operator reflects the new condition.

Values live only in memory here and in the Secret's ``data``; everything else sees names, versions,
reasons and the hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from choreo_dp.api import Condition, Environment
from choreo_dp.api.choreoapp import SecretRef
from choreo_dp.api.environment import KeyVaultSpec
from choreo_dp.api.files import FileSpec
from choreo_dp.api.vocabulary import API_VERSION, SECRETS_COMPONENT
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_dp.observability.health import Liveness
from choreo_dp.observability.supervise import supervise
from choreo_dp.secrets import manifest, metrics
from choreo_dp.secrets.clients import ClientPool, CredentialFactory, TransportSettings
from choreo_dp.secrets.errors import REASON_PRIORITY, Reason, SecretFetchError
from choreo_dp.secrets.fetcher import FAILURE_BACKOFF, KeyState, SecretFetcher, SecretKey
from choreo_dp.secrets.identity import identity_for

log = logging.getLogger(__name__)

CONDITION_TYPE = "SecretsSynced"
COMPONENT = SECRETS_COMPONENT
KUBE_DEADLINE = 30.0

AppKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class SecretSyncResult:
    secret_name: str
    values_hash: str | None
    ready: bool
    condition: Condition


@dataclass
class _App:
    namespace: str
    name: str
    uid: str = ""
    environment: str = ""
    # the slice of the ChoreoApp the Secret manifest and Events need (no spec besides the project)
    ref: dict[str, Any] = field(default_factory=dict)
    # the Secret's key (env var name, or file key for spec.files) -> the Key Vault secret
    keys: dict[str, SecretKey] = field(default_factory=dict)
    # what this process knows is in the cluster Secret
    written_hash: str | None = None
    written_keys: frozenset[str] = frozenset()
    written_sig: str | None = None
    written_at: float = 0.0
    cluster_checked: bool = False
    # last state told to the world (Event / annotation): "Synced" or a reason
    published: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> AppKey:
        return (self.namespace, self.name)


@dataclass
class _View:
    """An app's secrets as currently known: complete values (maybe last-known-good) and the worst error."""

    values: dict[str, str] = field(repr=False)
    digest: str | None
    error: SecretFetchError | None
    missing: list[str]


class SecretSyncer:
    def __init__(
        self,
        kube: KubeClient,
        *,
        default_key_vault: KeyVaultSpec | str | None = None,
        max_concurrency: int = 16,
        transport: TransportSettings | None = None,
        credential_factory: CredentialFactory | None = None,
        jitter: float = 0.1,
        failure_backoff: Backoff | tuple[float, float] = FAILURE_BACKOFF,
        field_manager: str = COMPONENT,
        max_gate_wait: float = 10.0,
    ) -> None:
        self._kube = kube
        if isinstance(default_key_vault, str):
            default_key_vault = KeyVaultSpec(url=default_key_vault)
        self._default_kv = default_key_vault
        self._field_manager = field_manager
        self._pool = (
            ClientPool(transport, credential_factory) if credential_factory else ClientPool(transport)
        )
        self._wake = asyncio.Event()
        self._next_wake = 0.0
        # Kubernetes writes from one refresh pass (a rotated secret shared by many apps) are bounded too.
        self._publish_slots = asyncio.Semaphore(max(4, max_concurrency))
        self.fetcher = SecretFetcher(
            self._pool,
            max_concurrency=max_concurrency,
            max_gate_wait=max_gate_wait,
            jitter=jitter,
            failure_backoff=failure_backoff,
            on_scheduled=self._scheduled,
        )
        self._apps: dict[AppKey, _App] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        # the refresh loop sleeps until the next key is due: only a crash makes it unhealthy
        self.liveness = Liveness("secrets-refresh", max_silence=None)

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def pool(self) -> ClientPool:
        return self._pool

    def _scheduled(self, due: float) -> None:
        # Wake the loop only when this entry is due before the loop would wake anyway.
        if due < self._next_wake:
            self._wake.set()

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(
                supervise("secrets-refresh", self._refresh_loop, liveness=self.liveness, logger=log),
                name="secrets-refresh",
            )

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for key in list(self.fetcher.states):
            self.fetcher.drop(key)
        await self._pool.close()

    async def forget_app(self, namespace: str, name: str) -> None:
        """Stop tracking an app (deleted). Its Secret goes with it through the ownerReference."""
        app = self._apps.pop((namespace, name), None)
        if app is not None:
            self._release(app, set())

    # --- reconcile path --------------------------------------------------------------------------

    async def sync_app(self, app_obj: Mapping[str, Any], env: Environment) -> SecretSyncResult:
        started = time.perf_counter()
        meta = app_obj["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        generation = meta.get("generation")
        app = self._apps.get((namespace, name))
        if app is None:
            app = _App(namespace, name)
            self._apps[app.key] = app
        async with app.lock:
            app.uid = str(meta.get("uid", ""))
            app.environment = env.metadata.name
            app.ref = _app_ref(app_obj)
            result = await self._sync_locked(app, app_obj, env, generation)
        metrics.SYNC_DURATION.labels("reconcile").observe(time.perf_counter() - started)
        return result

    async def _sync_locked(
        self, app: _App, app_obj: Mapping[str, Any], env: Environment, generation: int | None
    ) -> SecretSyncResult:
        name = manifest.secret_name(app.name)
        try:
            refs = _references(app_obj.get("spec") or {})
        except ValidationError as exc:
            # The CRD schema should have refused this; report it without echoing the input.
            return self._result(
                app, name, None, False, "False", "KeyVaultUnavailable",
                f"spec.secrets or spec.files is invalid ({exc.error_count()} errors)", generation,
            )  # fmt: skip

        if not refs:
            self._release(app, set())
            app.keys = {}
            await self._delete_secret(app)
            return self._result(app, name, None, True, "True", "Synced", "no secrets referenced", generation)

        kv = env.spec.key_vault or self._default_kv
        if kv is None:
            self._release(app, set())
            app.keys = {}
            ready, digest = await self._cluster_lkg(app, {r.key for r in refs})
            message = (
                f"Environment {env.metadata.name} has no keyVault configured; "
                f"{len(refs)} secret(s) cannot be read"
            )
            await self._announce(app, "NoKeyVault", message, from_refresh=False)
            return self._result(app, name, digest, ready, "False", "NoKeyVault", message, generation)

        identity = identity_for(env)
        keys = {r.key: SecretKey.make(kv.url, identity, r.secret, r.version) for r in refs}
        self._release(app, set(keys.values()))
        app.keys = keys
        states = [self.fetcher.state(k, kv.refresh_seconds) for k in keys.values()]
        for st in states:
            st.users.add(app.key)

        now = time.monotonic()
        await asyncio.gather(
            *(self.fetcher.read(st) for st in states if _needs_read(st, now)), return_exceptions=True
        )

        view = self._view(app)
        if view.digest is not None:
            await self._write(app, view, force=now - app.written_at >= kv.refresh_seconds)
        ready, digest = await self._ready(app, view)
        if view.error is None:
            metrics.LAST_SUCCESS.labels(app.environment).set_to_current_time()
            await self._announce(app, "Synced", "", from_refresh=False)
            message = f"{len(keys)} secret(s) synced from {kv.url.rstrip('/')}"
            return self._result(app, name, digest, ready, "True", "Synced", message, generation)
        message = view.error.message
        if ready:
            message += "; keeping the last known good values"
        await self._announce(app, view.error.reason, message, from_refresh=False)
        return self._result(app, name, digest, ready, "False", view.error.reason, message, generation)

    # --- refresh path ----------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            due = [
                st
                for st in self.fetcher.states.values()
                if st.users and st.next_due <= now and (st.inflight is None or st.inflight.done())
            ]
            if due:
                try:
                    await self.refresh(due)
                except Exception:
                    log.exception("secrets refresh pass failed; retrying on the next tick")
            upcoming = min((st.next_due for st in self.fetcher.states.values() if st.users), default=now + 60)
            self._wake.clear()
            timeout = min(60.0, max(0.05, upcoming - time.monotonic()))
            self._next_wake = time.monotonic() + timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def refresh(self, states: list[KeyState] | None = None) -> None:
        """Re-read ``states`` (default: every tracked secret, i.e. one whole cycle) and publish changes."""
        if states is None:
            states = [st for st in self.fetcher.states.values() if st.users]
        await asyncio.gather(*(self.fetcher.read(st) for st in states), return_exceptions=True)
        affected = {user for st in states for user in st.users}
        await asyncio.gather(*(self._publish(k) for k in sorted(affected)), return_exceptions=False)

    async def _publish(self, key: AppKey) -> None:
        app = self._apps.get(key)
        if app is None or not app.keys:
            return
        started = time.perf_counter()
        try:
            async with self._publish_slots, app.lock:
                view = self._view(app)
                if view.digest is not None and view.digest != app.written_hash:
                    await self._write(app, view)
                    await self._annotate(app, {manifest.APP_HASH_ANNOTATION: view.digest})
                if view.error is None:
                    metrics.LAST_SUCCESS.labels(app.environment).set_to_current_time()
                    await self._announce(app, "Synced", "", from_refresh=True)
                else:
                    message = view.error.message
                    if app.written_hash is not None or app.cluster_checked:
                        message += "; keeping the last known good values"
                    await self._announce(app, view.error.reason, message, from_refresh=True)
        except ApiError as exc:
            log.warning(
                "could not publish secrets of %s/%s: %s %s", app.namespace, app.name, exc.status, exc.reason
            )
        metrics.SYNC_DURATION.labels("refresh").observe(time.perf_counter() - started)

    # --- helpers ---------------------------------------------------------------------------------

    def _release(self, app: _App, keep: set[SecretKey]) -> None:
        """Stop using the app's secrets not in ``keep``; secrets nobody uses are dropped from the cache."""
        for key in set(app.keys.values()) - keep:
            st = self.fetcher.states.get(key)
            if st is None:
                continue
            st.users.discard(app.key)
            if not st.users:
                self.fetcher.drop(key)

    def _view(self, app: _App) -> _View:
        values: dict[str, str] = {}
        bindings: dict[str, tuple[str, str, str]] = {}
        missing: list[str] = []
        error: SecretFetchError | None = None
        for var, key in sorted(app.keys.items()):
            st = self.fetcher.states.get(key)
            if st is None or st.fetched is None:
                missing.append(var)
            else:
                values[var] = st.fetched.value
                bindings[var] = (key.vault_url, key.name, st.fetched.version)
            if (
                st is not None
                and st.error is not None
                and (error is None or REASON_PRIORITY[st.error.reason] < REASON_PRIORITY[error.reason])
            ):
                error = st.error
        if missing and error is None:
            # Not read yet (e.g. its read was cancelled): say so rather than claim success.
            error = SecretFetchError(
                "KeyVaultUnavailable", f"{len(missing)} secret(s) not read from Key Vault yet"
            )
        digest = manifest.values_hash(bindings) if not missing else None
        return _View(values, digest, error, missing)

    async def _write(self, app: _App, view: _View, *, force: bool = False) -> None:
        assert view.digest is not None
        body = manifest.secret_manifest(app.ref, app.environment, view.values, view.digest)
        sig = manifest.values_hash(
            {"labels": ("", str(sorted(body["metadata"]["labels"].items())), ""), "uid": ("", app.uid, "")}
        )
        keys = frozenset(view.values)
        if (
            not force
            and view.digest == app.written_hash
            and keys == app.written_keys
            and sig == app.written_sig
        ):
            return
        async with asyncio.timeout(KUBE_DEADLINE):
            applied = await self._kube.apply(body, self._field_manager, force=True)
            # SSA drops keys this manager no longer applies, unless another manager also owns them;
            # remove any leftover explicitly so a secret dropped from the spec is really gone.
            stale = sorted(set(applied.get("data") or {}) - keys)
            if stale:
                patch = [{"op": "remove", "path": f"/data/{_json_pointer(k)}"} for k in stale]
                await self._kube.patch(
                    R.SECRETS, body["metadata"]["name"], patch, app.namespace, patch_type="json"
                )
        app.written_hash, app.written_keys, app.written_sig = view.digest, keys, sig
        app.written_at = time.monotonic()
        app.cluster_checked = True
        log.info(
            "wrote Secret %s/%s (%d keys, hash %s)",
            app.namespace, body["metadata"]["name"], len(keys), view.digest,
        )  # fmt: skip

    async def _delete_secret(self, app: _App) -> None:
        """An app that references no secrets has no Secret (once per process, then only after writes)."""
        if app.cluster_checked and app.written_hash is None:
            return
        async with asyncio.timeout(KUBE_DEADLINE):
            await self._kube.delete(R.SECRETS, manifest.secret_name(app.name), app.namespace)
        app.written_hash, app.written_keys, app.written_sig = None, frozenset(), None
        app.cluster_checked = True

    async def _cluster_lkg(self, app: _App, wanted: set[str]) -> tuple[bool, str | None]:
        """Whether the Secret already in the cluster (e.g. from before a restart) has every key."""
        if app.written_hash is not None:
            return wanted <= app.written_keys, app.written_hash
        async with asyncio.timeout(KUBE_DEADLINE):
            existing = await self._kube.get(R.SECRETS, manifest.secret_name(app.name), app.namespace)
        app.cluster_checked = True
        if existing is None:
            return False, None
        present = set(existing.get("data") or {})
        digest = ((existing.get("metadata") or {}).get("annotations") or {}).get(
            manifest.VALUES_HASH_ANNOTATION
        )
        if wanted <= present:
            # Remember it so the next reconcile does not ask again.
            app.written_hash, app.written_keys = digest, frozenset(present)
            return True, digest
        return False, None

    async def _ready(self, app: _App, view: _View) -> tuple[bool, str | None]:
        wanted = set(app.keys)
        if app.written_hash is not None and app.written_hash == view.digest:
            return True, view.digest
        return await self._cluster_lkg(app, wanted)

    async def _announce(self, app: _App, state: str, message: str, *, from_refresh: bool) -> None:
        """On a change of state: a Warning Event when it is a failure; from the refresh loop also an
        annotation so the operator re-reads the condition. Repeated states are not re-announced."""
        if state == app.published:
            return
        previous, app.published = app.published, state
        if state != "Synced":
            await self._event(app, state, message)
        elif previous is not None:
            log.info("secrets of %s/%s synced again", app.namespace, app.name)
        if from_refresh:
            await self._annotate(app, {manifest.APP_STATE_ANNOTATION: state})

    async def _event(self, app: _App, reason: str, message: str) -> None:
        log.warning("secrets of %s/%s: %s: %s", app.namespace, app.name, reason, message)
        try:
            async with asyncio.timeout(KUBE_DEADLINE):
                await self._kube.post_event(app.ref, "Warning", reason, message, COMPONENT)
        except Exception as exc:
            log.warning("could not post event on %s/%s: %s", app.namespace, app.name, type(exc).__name__)

    async def _annotate(self, app: _App, annotations: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(KUBE_DEADLINE):
                await self._kube.patch(
                    R.CHOREOAPPS, app.name, {"metadata": {"annotations": annotations}}, app.namespace
                )
        except ApiError as exc:
            if exc.status == 404:
                await self.forget_app(app.namespace, app.name)
                return
            raise

    def _result(
        self,
        app: _App,
        secret_name: str,
        digest: str | None,
        ready: bool,
        status: str,
        reason: Reason | str,
        message: str,
        generation: int | None,
    ) -> SecretSyncResult:
        condition = Condition(
            type=CONDITION_TYPE,
            status="True" if status == "True" else "False",
            reason=reason,
            message=message,
            observed_generation=generation,
        )
        return SecretSyncResult(secret_name, digest if ready else None, ready, condition)


@dataclass(frozen=True)
class _Reference:
    """One Key Vault value the app's Secret holds: an env var, or a file (spec.files)."""

    key: str  # the Secret's key: the env var name, or the file's key (which no env var name can be)
    secret: str
    version: str | None


def _references(spec: Mapping[str, Any]) -> list[_Reference]:
    refs = [
        _Reference(r.name, r.key_vault_secret, r.version)
        for r in (SecretRef.model_validate(raw) for raw in spec.get("secrets") or [])
    ]
    for f in (FileSpec.model_validate(raw) for raw in spec.get("files") or []):
        if f.key_vault_secret is not None:
            refs.append(_Reference(f.key, f.key_vault_secret, f.version))
    return refs


def _needs_read(st: KeyState, now: float) -> bool:
    if st.inflight is not None and not st.inflight.done():
        return True  # join it rather than answer from a value being replaced
    if st.fetched is None:
        # Never read: read now, unless a recent failure scheduled the retry for later (no hammering
        # on every reconcile; the refresh loop retries with backoff and wakes the operator).
        return st.error is None or now >= st.next_due
    return now >= st.next_due or now - st.fetched_at >= st.interval


def _app_ref(app_obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = app_obj["metadata"]
    return {
        "apiVersion": app_obj.get("apiVersion", API_VERSION),
        "kind": app_obj.get("kind", "ChoreoApp"),
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {"project": (app_obj.get("spec") or {}).get("project", "")},
    }


def _json_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
