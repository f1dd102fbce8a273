"""Reconcile one Environment: namespace and guard rails, pull secret copy, status, deletion policy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from choreo_dp.api import Condition, Environment, set_condition
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.operator.children import apply_children, prune_children
from choreo_dp.operator.keys import ChildKey, EnvKey
from choreo_dp.render import RenderError, render_environment
from choreo_dp.render.labels import ENVIRONMENT_LABEL, MANAGED_BY

if TYPE_CHECKING:
    from choreo_dp.operator.controller import Controller

log = logging.getLogger("choreo_dp.operator.environment")

# Only Retain needs work at deletion (Delete is done by the garbage collector through the
# Namespace's ownerReference), so only Retain environments carry this finalizer. It is not
# kopf's finalizer: kopf removes its own when it has no deletion handlers.
RETAIN_FINALIZER = "choreo.dev/retain-namespace"
ENV_CHILD_KINDS = frozenset({"ResourceQuota", "NetworkPolicy", "Secret", "LimitRange", "ServiceAccount"})


def _claimant(ctl: Controller, namespace: str) -> str | None:
    """The environment that owns ``namespace``: the oldest one naming it."""
    claims = []
    for name, body in ctl.state.envs.items():
        try:
            env = Environment.model_validate(body)
        except ValidationError:
            continue
        if env.target_namespace == namespace and not body["metadata"].get("deletionTimestamp"):
            claims.append((str(body["metadata"].get("creationTimestamp") or ""), name))
    return min(claims)[1] if claims else None


async def reconcile(ctl: Controller, key: EnvKey) -> float | None:
    body = ctl.state.envs.get(key.name)
    if body is None:
        ctl.state.forget_owner(key)
        ctl.queue.discard(key)
        ctl.clear_warning(key)
        return None
    meta = body["metadata"]
    generation = int(meta.get("generation") or 0)
    try:
        env = Environment.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = f"invalid spec: {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
        await _status(ctl, key, body, "Failed", None, "InvalidSpec", msg, generation)
        await ctl.warn_once(key, body, "InvalidSpec", msg)
        return None

    if meta.get("deletionTimestamp"):
        await _finalize(ctl, key, body, env)
        return None
    await _ensure_finalizer(ctl, key, body, want=env.spec.deletion_policy == "Retain")

    namespace = env.target_namespace
    claimant = _claimant(ctl, namespace)
    if claimant is not None and claimant != key.name:
        msg = f"namespace {namespace!r} already belongs to environment {claimant!r}"
        await _status(ctl, key, body, "Failed", namespace, "NamespaceConflict", msg, generation)
        await ctl.warn_once(key, body, "NamespaceConflict", msg)
        return None

    app_keys = [k for k in ctl.state.apps_of_env(key.name) if k.namespace == namespace]
    # Deleting a namespace takes the namespace controller seconds (longer with many objects), and
    # nothing can be created in it meanwhile: an Environment deleted and put back at once (the
    # agent restores what another writer deleted) finds its old namespace Terminating.  Say so and
    # wait; the Namespace's DELETED event brings us back to create it afresh.
    live_ns = await ctl.kube.get(R.NAMESPACES, namespace)
    if live_ns is not None and live_ns["metadata"].get("deletionTimestamp"):
        msg = f"namespace {namespace} is still being deleted; it is created again once it is gone"
        await _status(
            ctl, key, body, "Pending", namespace, "NamespaceTerminating", msg, generation, len(app_keys)
        )
        return ctl.config.env_resync_seconds

    pull_secret: dict[str, Any] | None = None
    pull_problem: str | None = None
    pull_name = env.spec.registry.pull_secret_name if env.spec.registry else None
    if pull_name:
        pull_secret = await ctl.kube.get(R.SECRETS, pull_name, ctl.config.operator_namespace)
        if pull_secret is None:
            pull_problem = (
                f"pull secret {pull_name!r} not found in namespace {ctl.config.operator_namespace!r}"
            )

    projects = {str((ctl.state.apps[k].get("spec") or {}).get("project", "")) for k in app_keys}
    try:
        manifests = render_environment(
            env, projects=sorted(p for p in projects if p), pull_secret=pull_secret
        )
    except RenderError as exc:
        await _status(ctl, key, body, "Failed", namespace, exc.reason, exc.message, generation)
        return None
    force = ctl.env_full_apply_due(key.name)
    await apply_children(ctl, key, manifests, force=force)
    if force:
        ctl.mark_env_full_apply(key.name)
    keep = {ChildKey.of(m) for m in manifests}
    await prune_children(ctl, key, str(meta.get("uid", "")), keep, ENV_CHILD_KINDS)

    if pull_problem is not None:
        await _status(
            ctl,
            key,
            body,
            "Pending",
            namespace,
            "PullSecretNotFound",
            pull_problem,
            generation,
            len(app_keys),
        )
        await ctl.warn_once(key, body, "PullSecretNotFound", pull_problem)
        return ctl.config.env_resync_seconds
    msg = f"namespace {namespace} ready with {len(app_keys)} app(s)"
    await _status(ctl, key, body, "Ready", namespace, "Ready", msg, generation, len(app_keys))
    ctl.clear_warning(key)
    return None


async def _status(
    ctl: Controller,
    key: EnvKey,
    body: dict[str, Any],
    phase: str,
    namespace: str | None,
    reason: str,
    message: str,
    generation: int,
    apps: int | None = None,
) -> None:
    current = body.get("status") or {}
    conditions = []
    for raw in current.get("conditions") or []:
        try:
            conditions.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    ready = Condition(
        type="Ready",
        status="True" if phase == "Ready" else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
    )
    conditions = set_condition(conditions, ready)
    status: dict[str, Any] = {
        "phase": phase,
        "namespace": namespace,
        "apps": apps,
        "observedGeneration": generation,
        "conditions": [c.to_k8s() for c in conditions],
    }
    if {k: v for k, v in current.items() if v is not None} == {
        k: v for k, v in status.items() if v is not None
    }:
        return
    live = await ctl.kube.patch(
        R.ENVIRONMENTS, key.name, {"status": status}, None, "merge", subresource="status"
    )
    cached = ctl.state.envs.get(key.name)
    if cached is not None and live:
        cached["status"] = live.get("status") or status


async def _ensure_finalizer(ctl: Controller, key: EnvKey, body: dict[str, Any], *, want: bool) -> None:
    finalizers: list[str] = list(body["metadata"].get("finalizers") or [])
    has = RETAIN_FINALIZER in finalizers
    if want == has:
        return
    if want:
        patch: list[dict[str, Any]] = (
            [{"op": "add", "path": "/metadata/finalizers/-", "value": RETAIN_FINALIZER}]
            if finalizers
            else [{"op": "add", "path": "/metadata/finalizers", "value": [RETAIN_FINALIZER]}]
        )
    else:
        i = finalizers.index(RETAIN_FINALIZER)
        # "test" first: never remove someone else's finalizer if the list moved under us.
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{i}", "value": RETAIN_FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"},
        ]
    live = await ctl.kube.patch(R.ENVIRONMENTS, key.name, patch, None, "json")
    body["metadata"]["finalizers"] = (live.get("metadata") or {}).get("finalizers") or []


async def _finalize(ctl: Controller, key: EnvKey, body: dict[str, Any], env: Environment) -> None:
    if RETAIN_FINALIZER not in (body["metadata"].get("finalizers") or []):
        return
    namespace = env.target_namespace
    await _status(
        ctl,
        key,
        body,
        "Terminating",
        namespace,
        "Retaining",
        "leaving the namespace in place",
        int(body["metadata"].get("generation") or 0),
    )
    # Retain: everything stays, but stops being ours. Remove our labels and ownerReferences so the
    # garbage collector keeps the namespace's guard rails (the app ServiceAccount above all).
    unmanage = {"metadata": {"labels": {MANAGED_BY: None, ENVIRONMENT_LABEL: None}}}
    children = set(ctl.state.live.get(key, {})) | ctl.state.desired_by_owner.get(key, set())
    for child in sorted(children):
        if child.kind == "Namespace":
            continue
        patch = {"metadata": {**unmanage["metadata"], "ownerReferences": None}}
        try:
            await ctl.kube.patch(
                R.for_kind(child.api_version, child.kind), child.name, patch, child.namespace, "merge"
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
    try:
        await ctl.kube.patch(
            R.NAMESPACES, namespace, {"metadata": {**unmanage["metadata"], "ownerReferences": None}}
        )
    except ApiError as exc:
        if not exc.not_found:
            raise
    await _ensure_finalizer(ctl, key, body, want=False)
    log.info("environment %s deleted; namespace %s retained and unlabelled", key.name, namespace)
