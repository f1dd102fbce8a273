"""What the operator knows from watch events: an informer-style cache, trimmed to what it needs."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from choreo_dp.api.vocabulary import APP_LABEL, ENVIRONMENT_LABEL
from choreo_dp.operator.keys import AppKey, ChildKey, EnvKey, ObjKey
from choreo_dp.operator.summaries import CronJobSummary, DeploymentSummary, PodSummary

_KEEP_META = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "labels",
    "annotations",
    "deletionTimestamp",
    "finalizers",
    "creationTimestamp",
)


def trim(body: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields and other bulk the reconcilers never read."""
    meta = body.get("metadata") or {}
    out = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = {k: meta[k] for k in _KEEP_META if k in meta}
    return out


def canonical(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


@dataclass(slots=True)
class TrackedChild:
    owner_uid: str | None
    in_sync: bool
    # What ``in_sync`` was computed from (desired text, generation, labels, annotations), for kinds
    # whose spec edits always bump the generation: their status-only events then skip the deep
    # comparison (it was ~5% of the operator's CPU in a cold start).
    basis: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    """A DataPlane's ``lastHeartbeatTime`` and when the watch first showed it (monotonic seconds).

    ``age_when_seen``: how old the wall clocks said it was then. Trusted only for the first heartbeat
    a process sees (0 for every later one), so a skew between the agent's clock and ours can delay
    a verdict once, at start, but never make a renewing agent look dead.
    """

    value: str | None
    seen_at: float
    age_when_seen: float


@dataclass
class Cache:
    """The informer: objects as the watches last showed them. Only watch events write it."""

    apps: dict[AppKey, dict[str, Any]] = field(default_factory=dict)
    envs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Children seen live, per owner key derived from their labels.
    live: dict[ObjKey, dict[ChildKey, TrackedChild]] = field(default_factory=lambda: defaultdict(dict))
    deployments: dict[AppKey, DeploymentSummary] = field(default_factory=dict)
    cronjobs: dict[AppKey, CronJobSummary] = field(default_factory=dict)
    pods: dict[AppKey, dict[str, PodSummary]] = field(default_factory=lambda: defaultdict(dict))
    dataplanes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # DataPlane name -> when this process's watch first showed its current heartbeat.
    heartbeats: dict[str, HeartbeatSeen] = field(default_factory=dict)

    def apps_of_env(self, env_name: str) -> list[AppKey]:
        return [k for k, b in self.apps.items() if (b.get("spec") or {}).get("environment") == env_name]

    def forget_owner(self, owner: ObjKey) -> None:
        """The owner is gone: what was seen of its children goes with it (their deletion events
        may still come, and find nothing)."""
        self.live.pop(owner, None)
        if isinstance(owner, AppKey):
            self.deployments.pop(owner, None)
            self.cronjobs.pop(owner, None)
            self.pods.pop(owner, None)


@dataclass
class Record:
    """The reconcilers' own memory of what they wrote: theirs to write, read by the watch side.

    ``desired``: the last manifest applied per child (canonical JSON), against which watch events
    are checked for drift. The ``*_answers``: the API's answers to our writes, which stand for the
    object until the watch delivers its next event about it (a write's answer races its watch
    event; without them a reconcile in between would see its own write undone and write again).
    """

    desired: dict[ChildKey, str] = field(default_factory=dict)
    desired_by_owner: dict[ObjKey, set[ChildKey]] = field(default_factory=dict)
    # Deployment generation our last apply produced (what "Ready" must see observed).
    applied_generation: dict[AppKey, int] = field(default_factory=dict)
    env_full_apply: dict[str, float] = field(default_factory=dict)
    # owner -> child -> what the apply's answer showed (None: we deleted it); and child -> owner.
    child_answers: dict[ObjKey, dict[ChildKey, TrackedChild | None]] = field(default_factory=dict)
    _answer_owner: dict[ChildKey, ObjKey] = field(default_factory=dict)
    deployment_answers: dict[AppKey, DeploymentSummary] = field(default_factory=dict)
    cronjob_answers: dict[AppKey, CronJobSummary] = field(default_factory=dict)
    status_answers: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)
    finalizer_answers: dict[str, list[str]] = field(default_factory=dict)

    def applied(self, owner: ObjKey, key: ChildKey, text: str, tracked: TrackedChild) -> None:
        self.desired[key] = text
        self._answer(owner, key, tracked)

    def pruned(self, owner: ObjKey, key: ChildKey) -> None:
        self._answer(owner, key, None)

    def _answer(self, owner: ObjKey, key: ChildKey, tracked: TrackedChild | None) -> None:
        self.observed_child(key)
        self.child_answers.setdefault(owner, {})[key] = tracked
        self._answer_owner[key] = owner

    def want(self, owner: ObjKey, keys: set[ChildKey]) -> None:
        """``owner`` now wants exactly ``keys``: forget the manifests of the children it dropped."""
        for stale in self.desired_by_owner.get(owner, set()) - keys:
            self.desired.pop(stale, None)
        self.desired_by_owner[owner] = keys

    def forget_owner(self, owner: ObjKey) -> None:
        for key in self.desired_by_owner.pop(owner, set()):
            self.desired.pop(key, None)
        for key in self.child_answers.pop(owner, {}):
            self._answer_owner.pop(key, None)
        self.status_answers.pop(owner, None)
        if isinstance(owner, AppKey):
            self.applied_generation.pop(owner, None)
            self.deployment_answers.pop(owner, None)
            self.cronjob_answers.pop(owner, None)
        else:
            self.finalizer_answers.pop(owner.name, None)

    # --- the watch side: an event about an object supersedes our answers about it --------------

    def observed_primary(self, key: ObjKey) -> None:
        self.status_answers.pop(key, None)
        if isinstance(key, EnvKey):
            self.finalizer_answers.pop(key.name, None)

    def observed_child(self, key: ChildKey) -> None:
        owner = self._answer_owner.pop(key, None)
        if owner is None:
            return
        answers = self.child_answers.get(owner, {})
        answers.pop(key, None)
        if not answers:
            self.child_answers.pop(owner, None)


class CacheView:
    """The cache as reconcilers see it: read-only, with their own unobserved writes laid over it.

    Bodies it returns must not be modified (they are the cache's own, or shallow copies of them).
    """

    def __init__(self, cache: Cache, record: Record) -> None:
        self._cache = cache
        self._record = record

    def app(self, key: AppKey) -> dict[str, Any] | None:
        return self._overlay(key, self._cache.apps.get(key))

    def env(self, name: str) -> dict[str, Any] | None:
        return self._overlay(EnvKey(name), self._cache.envs.get(name))

    def envs(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self._cache.envs.items())

    def apps_of_env(self, env_name: str) -> list[AppKey]:
        return self._cache.apps_of_env(env_name)

    def dataplane(self, name: str) -> dict[str, Any] | None:
        return self._cache.dataplanes.get(name)

    def heartbeat(self, name: str) -> HeartbeatSeen | None:
        return self._cache.heartbeats.get(name)

    def deployment(self, key: AppKey) -> DeploymentSummary | None:
        return self._record.deployment_answers.get(key) or self._cache.deployments.get(key)

    def cronjob(self, key: AppKey) -> CronJobSummary | None:
        return self._record.cronjob_answers.get(key) or self._cache.cronjobs.get(key)

    def pods(self, key: AppKey) -> list[PodSummary]:
        return list(self._cache.pods.get(key, {}).values())

    def children(self, owner: ObjKey) -> dict[ChildKey, TrackedChild]:
        """The live children of ``owner``: what the watch showed, updated by our applies and deletes."""
        out = dict(self._cache.live.get(owner, {}))
        for key, tracked in self._record.child_answers.get(owner, {}).items():
            if tracked is None:
                out.pop(key, None)
            else:
                out[key] = tracked
        return out

    def in_sync(self, key: ChildKey, owner: ObjKey) -> bool:
        answers = self._record.child_answers.get(owner, {})
        tracked = answers[key] if key in answers else self._cache.live.get(owner, {}).get(key)
        return tracked is not None and tracked.in_sync

    def _overlay(self, key: ObjKey, body: dict[str, Any] | None) -> dict[str, Any] | None:
        if body is None:
            return None
        status = self._record.status_answers.get(key)
        finalizers = self._record.finalizer_answers.get(key.name) if isinstance(key, EnvKey) else None
        if status is None and finalizers is None:
            return body
        out = dict(body)
        if status is not None:
            out["status"] = status
        if finalizers is not None:
            out["metadata"] = {**body["metadata"], "finalizers": finalizers}
        return out


# Kinds whose every spec change bumps metadata.generation (the API server guarantees it for these).
GENERATION_TRACKED_KINDS = frozenset({"Deployment", "CronJob"})


def sync_basis(kind: str, desired: str, body: dict[str, Any]) -> tuple[Any, ...] | None:
    """The facts an in-sync verdict for ``body`` depends on, or None when they cannot be told apart."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    if kind not in GENERATION_TRACKED_KINDS or generation is None:
        return None
    return (desired, generation, meta.get("labels"), meta.get("annotations"))


def owner_key_of_child(body: dict[str, Any]) -> ObjKey | None:
    """The owner a managed child belongs to, from its labels (app children carry the app label)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    app = labels.get(APP_LABEL)
    if app and meta.get("namespace"):
        return AppKey(meta["namespace"], app)
    env = labels.get(ENVIRONMENT_LABEL)
    if env:
        return EnvKey(env)
    return None


def controller_owner_uid(body: dict[str, Any]) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
