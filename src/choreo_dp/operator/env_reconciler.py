"""Reconcile one Environment: its namespace, guard rails, pull secret copy, status, deletion policy.

The namespace is the trust boundary. The operator creates an Environment's namespace itself and
marks it (``choreo.dev/environment-uid``, label and annotation); it writes into, and lets the
garbage collector delete, only a namespace carrying the mark of the Environment at hand. An
Environment naming a namespace that exists without its mark, or a protected one, is Failed and
nothing is written there. ``spec.namespace`` cannot move an Environment once its namespace exists:
the change is refused and the namespace it owns stays reconciled (see docs/operator.md).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from choreo_dp.api import Condition, Environment, set_condition, vocabulary
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.operator.changes import Before, Changes, report
from choreo_dp.operator.child_errors import ChildWriteError
from choreo_dp.operator.children import apply_children, prune_children
from choreo_dp.operator.drift import contains
from choreo_dp.operator.keys import AppKey, ChildKey, EnvKey
from choreo_dp.operator.metrics import APPLIES
from choreo_dp.operator.reconcile import DONE, ReconcileContext, Result, TerminalError
from choreo_dp.operator.spec_only import without_status
from choreo_dp.operator.state import TrackedChild, canonical, controller_owner_uid
from choreo_dp.render import PolicyViolation, RenderError, render_environment
from choreo_dp.render.environment import (
    check_pull_secret,
    namespace_owner,
    protected_reason,
    render_namespace,
)
from choreo_dp.render.labels import ENVIRONMENT_LABEL, ENVIRONMENT_UID_KEY, MANAGED_BY

log = logging.getLogger("choreo_dp.operator.environment")

# Only Retain needs work at deletion (Delete is done by the garbage collector through the
# Namespace's ownerReference), so only Retain environments carry this finalizer. It is not
# kopf's finalizer: kopf removes its own when it has no deletion handlers.
RETAIN_FINALIZER = vocabulary.RETAIN_FINALIZER
ENV_CHILD_KINDS = frozenset(
    {"ResourceQuota", "NetworkPolicy", "Secret", "LimitRange", "ServiceAccount", "Role", "RoleBinding"}
)


@dataclass
class Binding:
    """Where an Environment lives, or why it lives nowhere.

    ``namespace``/``live``: a namespace the Environment owns (exists, carries its mark), the only
    place the operator writes for it. ``reason``/``message``: a refusal. With a namespace, the
    Environment is still reconciled there (its move to another namespace was refused); without one,
    nothing is written anywhere.
    """

    namespace: str | None = None
    live: dict[str, Any] | None = None
    phase: str = "Failed"
    reason: str = ""
    message: str = ""
    requeue: float | None = None


def with_namespace(env: Environment, namespace: str) -> Environment:
    """``env`` as bound to ``namespace``, the namespace it owns, whatever spec.namespace says now."""
    if env.target_namespace == namespace:
        return env
    return env.model_copy(update={"spec": env.spec.model_copy(update={"namespace": namespace})})


def _terminating(namespace: dict[str, Any]) -> bool:
    return bool((namespace.get("metadata") or {}).get("deletionTimestamp"))


async def owned_namespaces(ctx: ReconcileContext, uid: str) -> list[dict[str, Any]]:
    """The live namespaces carrying the mark of Environment ``uid`` (not being deleted), oldest first."""
    items, _ = await ctx.kube.list(R.NAMESPACES, label_selector={ENVIRONMENT_UID_KEY: uid})
    mine = [n for n in items if namespace_owner(n) == uid and not _terminating(n)]
    return sorted(
        mine, key=lambda n: (str(n["metadata"].get("creationTimestamp") or ""), n["metadata"]["name"])
    )


def _env_with_uid(ctx: ReconcileContext, uid: str) -> str | None:
    for name, body in ctx.cache.envs():
        if str(body["metadata"].get("uid") or "") == uid:
            return name
    return None


def _usable(ctx: ReconcileContext, live: dict[str, Any]) -> Binding:
    name = str(live["metadata"]["name"])
    protected = protected_reason(name, live, ctx.config.protected_patterns)
    if protected is not None:
        return Binding(reason="NamespaceProtected", message=protected)
    return Binding(name, live)


def _not_owned(ctx: ReconcileContext, name: str, live: dict[str, Any]) -> Binding:
    owner = namespace_owner(live)
    claimant = _env_with_uid(ctx, owner) if owner else None
    if claimant is not None:
        return Binding(
            reason="NamespaceConflict",
            message=f"namespace {name!r} belongs to environment {claimant!r}; environments never share a namespace",
        )
    return Binding(
        reason="NamespaceNotOwned",
        message=(
            f"namespace {name!r} exists and was not created for this environment; choreo-dp never "
            "adopts a namespace it did not create (name another namespace, or remove this one)"
        ),
    )


async def _bind(ctx: ReconcileContext, env: Environment, uid: str) -> Binding:
    """Find (or create) the namespace ``env`` owns. Creates at most; never writes to one that exists."""
    target = env.target_namespace
    live = await ctx.kube.get(R.NAMESPACES, target)
    if live is not None and namespace_owner(live) == uid and not _terminating(live):
        return _usable(ctx, live)
    others = [n for n in await owned_namespaces(ctx, uid) if n["metadata"]["name"] != target]
    if others:
        binding = _usable(ctx, others[0])
        if binding.namespace is not None:
            binding.reason = "NamespaceImmutable"
            binding.message = (
                f"spec.namespace says {target!r}, but this environment lives in namespace "
                f"{binding.namespace!r} and an environment's namespace cannot change; set it back to "
                f"{binding.namespace!r}, or delete the environment and create it again. "
                f"{binding.namespace!r} is still reconciled."
            )
        return binding
    protected = protected_reason(target, live, ctx.config.protected_patterns)
    if protected is not None:
        return Binding(reason="NamespaceProtected", message=protected)
    if live is None:
        try:
            # Create, never apply: an apply would take over a namespace someone made meanwhile.
            return Binding(target, await ctx.kube.create(R.NAMESPACES, render_namespace(env)))
        except ApiError as exc:
            if not exc.conflict:
                raise
        live = await ctx.kube.get(R.NAMESPACES, target)
        if live is None:
            raise ApiError(409, "Conflict", f"namespace {target} was created and deleted meanwhile")
        if namespace_owner(live) == uid and not _terminating(live):
            return _usable(ctx, live)
    if _terminating(live):
        # Deleting a namespace takes the namespace controller seconds (longer with many objects),
        # and nothing can be created in it meanwhile: an Environment deleted and put back at once
        # (the agent restores what another writer deleted) finds its old namespace Terminating.
        # Say so and wait; the resync brings us back to create it afresh once it is gone.
        return Binding(
            phase="Pending",
            reason="NamespaceTerminating",
            message=f"namespace {target} is still being deleted; it is created again once it is gone",
            requeue=ctx.config.env_resync_seconds,
        )
    return _not_owned(ctx, target, live)


def _drifted(live: dict[str, Any], manifest: dict[str, Any], uid: str) -> bool:
    if not contains(live, manifest):
        return True
    if "ownerReferences" in manifest["metadata"]:
        return False
    # Retain: our ownerReference must go, or the garbage collector takes the namespace anyway.
    return any(ref.get("uid") == uid for ref in live["metadata"].get("ownerReferences") or [])


async def _mark_namespace(
    ctx: ReconcileContext, key: EnvKey, manifest: dict[str, Any], live: dict[str, Any], uid: str
) -> None:
    """Keep our labels, mark and ownerReference on the namespace we own, and record it as checked."""
    ns_key = ChildKey.of(manifest)
    if _drifted(live, manifest, uid):
        meta = manifest["metadata"]
        # A merge patch of the very version whose mark we read (resourceVersion is a precondition):
        # a namespace replaced meanwhile is never written. It sets the ownerReferences list as a
        # whole, which server-side apply cannot do for an ownerReference set at creation.
        patch = {
            "metadata": {
                "resourceVersion": live["metadata"]["resourceVersion"],
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta.get("ownerReferences"),
            }
        }
        live = await ctx.kube.patch(R.NAMESPACES, ns_key.name, patch)
        APPLIES.labels("Namespace").inc()
    ctx.record.desired_by_owner.setdefault(key, set()).add(ns_key)
    ctx.record.applied(
        key, ns_key, canonical(manifest), TrackedChild(controller_owner_uid(live), contains(live, manifest))
    )


def _unbind(ctx: ReconcileContext, key: EnvKey) -> tuple[AppKey, ...]:
    """Forget that this Environment owns a namespace; returns its apps, which must check again
    (and be refused)."""
    keys = ctx.record.desired_by_owner.get(key, set())
    dropped = {k for k in keys if k.kind == "Namespace"}
    for ns_key in dropped:
        keys.discard(ns_key)
        ctx.record.desired.pop(ns_key, None)
    return tuple(ctx.cache.apps_of_env(key.name)) if dropped else ()


def namespace_verified(ctx: ReconcileContext, env_name: str, namespace: str, uid: str) -> bool:
    """Whether the last reconcile of ``env_name`` found ``namespace`` carrying its mark (uid
    ``uid``) and the namespace watch has shown nothing since that says otherwise. No API call:
    apps ask this on every reconcile."""
    ns_key = ChildKey("v1", "Namespace", "", namespace)
    env_key = EnvKey(env_name)
    if ns_key not in ctx.record.desired_by_owner.get(env_key, ()) or not ctx.cache.in_sync(ns_key, env_key):
        return False
    text = ctx.record.desired.get(ns_key)
    if text is None:
        return False
    annotations = (json.loads(text).get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(ENVIRONMENT_UID_KEY) == uid)


async def check_app_namespace(
    ctx: ReconcileContext, env_name: str, uid: str, namespace: str
) -> PolicyViolation | None:
    """Why nothing of Environment ``env_name`` (uid ``uid``) may be written into ``namespace``, or None
    when the Environment owns it."""
    protected = protected_reason(namespace, None, ctx.config.protected_patterns)
    if protected is not None:
        return PolicyViolation("NamespaceProtected", protected)
    if namespace_verified(ctx, env_name, namespace, uid):
        return None
    live = await ctx.kube.get(R.NAMESPACES, namespace)
    protected = protected_reason(namespace, live, ctx.config.protected_patterns)
    if protected is not None:
        return PolicyViolation("NamespaceProtected", protected)
    owner = namespace_owner(live)
    if owner == uid:
        return None
    claimant = _env_with_uid(ctx, owner) if owner else None
    whose = f"belongs to environment {claimant!r}" if claimant else "was not created by choreo-dp for it"
    return PolicyViolation(
        "NamespaceNotOwned",
        f"namespace {namespace!r} {whose}; nothing of environment {env_name!r} is deployed into a "
        "namespace it does not own",
    )


async def reconcile(ctx: ReconcileContext, key: EnvKey) -> Result:
    body = ctx.cache.env(key.name)
    if body is None:
        # Gone (the controller forgets what we recorded for it).
        return DONE
    meta = body["metadata"]
    generation = int(meta.get("generation") or 0)
    try:
        env = Environment.model_validate(without_status(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = f"invalid spec: {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
        await _status(ctx, key, body, "Failed", None, "InvalidSpec", msg, generation)
        await ctx.recorder.warn(key, body, "InvalidSpec", msg)
        return DONE

    if meta.get("deletionTimestamp"):
        await _finalize(ctx, key, body, env)
        return DONE
    body = await _ensure_finalizer(ctx, key, body, want=env.spec.deletion_policy == "Retain")

    uid = str(meta.get("uid") or "")
    binding = await _bind(ctx, env, uid)
    if binding.namespace is None or binding.live is None:
        recheck = _unbind(ctx, key)
        await _status(
            ctx, key, body, binding.phase, env.target_namespace, binding.reason, binding.message, generation
        )
        if binding.phase == "Failed":
            await ctx.recorder.warn(key, body, binding.reason, binding.message)
        report(
            log,
            "environment",
            key,
            Changes(),
            (body.get("status") or {}).get("phase"),
            binding.phase,
            binding.reason,
        )
        return Result(requeue_after=binding.requeue, enqueue=recheck)

    namespace = binding.namespace
    bound = with_namespace(env, namespace)
    app_keys = [k for k in ctx.cache.apps_of_env(key.name) if k.namespace == namespace]
    pull_secret: dict[str, Any] | None = None
    pull_problem: PolicyViolation | None = None
    pull_name = env.spec.registry.pull_secret_name if env.spec.registry else None
    if pull_name:
        source = ctx.config.operator_namespace
        pull_secret = await ctx.kube.get(R.SECRETS, pull_name, source)
        pull_problem = check_pull_secret(pull_secret, pull_name, source)
        if pull_problem is not None:
            pull_secret = None  # nothing is copied (and an earlier copy is pruned)

    projects = {str(((ctx.cache.app(k) or {}).get("spec") or {}).get("project", "")) for k in app_keys}
    try:
        manifests = render_environment(
            bound,
            projects=sorted(p for p in projects if p),
            pull_secret=pull_secret,
            agent_service_account=ctx.config.agent_service_account,
        )
    except RenderError as exc:
        await _status(ctx, key, body, "Failed", namespace, exc.reason, exc.message, generation)
        return DONE
    ns_manifest, children = manifests[0], manifests[1:]
    last_full_apply = ctx.record.env_full_apply.get(key.name, 0.0)
    force = time.monotonic() - last_full_apply >= ctx.config.env_resync_seconds
    changes = Changes()
    before = Before.of(ctx, key)
    try:
        applied = await apply_children(ctx, key, children, force=force)
        changes.note_applied(ctx, before, applied)
        # After apply_children, which records the Environment's desired children anew.
        await _mark_namespace(ctx, key, ns_manifest, binding.live, uid)
        if force:
            ctx.record.env_full_apply[key.name] = time.monotonic()
        keep = {ChildKey.of(m) for m in manifests}
        changes.note_deleted(await prune_children(ctx, key, uid, keep, ENV_CHILD_KINDS))
    except ChildWriteError as exc:
        raise await _refused(ctx, key, body, namespace, generation, len(app_keys), changes, exc) from exc
    previous = (body.get("status") or {}).get("phase")

    if binding.reason:
        await _status(
            ctx, key, body, "Failed", namespace, binding.reason, binding.message, generation, len(app_keys)
        )
        await ctx.recorder.warn(key, body, binding.reason, binding.message)
        report(log, "environment", key, changes, previous, "Failed", binding.reason)
        return DONE
    if pull_problem is not None:
        await _status(
            ctx,
            key,
            body,
            "Pending",
            namespace,
            pull_problem.reason,
            pull_problem.message,
            generation,
            len(app_keys),
        )
        await ctx.recorder.warn(key, body, pull_problem.reason, pull_problem.message)
        report(log, "environment", key, changes, previous, "Pending", pull_problem.reason)
        return Result(requeue_after=ctx.config.env_resync_seconds)
    msg = f"namespace {namespace} ready with {len(app_keys)} app(s)"
    await _status(ctx, key, body, "Ready", namespace, "Ready", msg, generation, len(app_keys))
    ctx.recorder.clear(key)
    report(log, "environment", key, changes, previous, "Ready")
    return DONE


async def _refused(
    ctx: ReconcileContext,
    key: EnvKey,
    body: dict[str, Any],
    namespace: str,
    generation: int,
    apps: int,
    changes: Changes,
    exc: ChildWriteError,
) -> Exception:
    """Record a refused child on the Environment's status and Events; returns what to raise.

    ``Failed``: the Environment's phases (its CRD's enum) have no ``Degraded``. Retryable
    refusals are retried with backoff; the others wait for a change (an event) or the resync.
    """
    await _status(ctx, key, body, "Failed", namespace, "ApplyFailed", exc.summary, generation, apps)
    await ctx.recorder.warn(key, body, "ApplyFailed", exc.summary)
    report(log, "environment", key, changes, (body.get("status") or {}).get("phase"), "Failed", "ApplyFailed")
    return TerminalError(exc.summary) if exc.terminal else exc


async def _status(
    ctx: ReconcileContext,
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
    live = await ctx.kube.patch(
        R.ENVIRONMENTS, key.name, {"status": status}, None, "merge", subresource="status"
    )
    if live:
        ctx.record.status_answers[key] = live.get("status") or status


async def _ensure_finalizer(
    ctx: ReconcileContext, key: EnvKey, body: dict[str, Any], *, want: bool
) -> dict[str, Any]:
    """Add or remove our finalizer; returns ``body`` as the write left it."""
    finalizers: list[str] = list(body["metadata"].get("finalizers") or [])
    has = RETAIN_FINALIZER in finalizers
    if want == has:
        return body
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
    live = await ctx.kube.patch(R.ENVIRONMENTS, key.name, patch, None, "json")
    now = (live.get("metadata") or {}).get("finalizers") or []
    ctx.record.finalizer_answers[key.name] = now
    return {**body, "metadata": {**body["metadata"], "finalizers": now}}


async def _finalize(ctx: ReconcileContext, key: EnvKey, body: dict[str, Any], env: Environment) -> None:
    if RETAIN_FINALIZER not in (body["metadata"].get("finalizers") or []):
        return
    uid = str(body["metadata"].get("uid") or "")
    # Only what this Environment owns is released: never a namespace it was refused.
    owned = await owned_namespaces(ctx, uid)
    names = {str(n["metadata"]["name"]) for n in owned}
    await _status(
        ctx,
        key,
        body,
        "Terminating",
        min(names) if names else env.target_namespace,
        "Retaining",
        "leaving the namespace in place",
        int(body["metadata"].get("generation") or 0),
    )
    # Retain: everything stays, but stops being ours. Remove our labels and ownerReferences so the
    # garbage collector keeps the namespace's guard rails (the app ServiceAccount above all).
    unmanage = {MANAGED_BY: None, ENVIRONMENT_LABEL: None}
    children = set(ctx.cache.children(key)) | ctx.record.desired_by_owner.get(key, set())
    for child in sorted(children):
        if child.kind == "Namespace" or child.namespace not in names:
            continue
        patch = {"metadata": {"labels": unmanage, "ownerReferences": None}}
        try:
            await ctx.kube.patch(
                R.for_kind(child.api_version, child.kind), child.name, patch, child.namespace, "merge"
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
    for namespace in owned:
        # The mark goes too: the namespace is the cluster admin's now, and no Environment (not
        # even one of the same name created again) takes it back.
        released = {
            "metadata": {
                "resourceVersion": namespace["metadata"]["resourceVersion"],
                "labels": {**unmanage, ENVIRONMENT_UID_KEY: None},
                "annotations": {ENVIRONMENT_UID_KEY: None},
                "ownerReferences": None,
            }
        }
        try:
            await ctx.kube.patch(R.NAMESPACES, namespace["metadata"]["name"], released)
        except ApiError as exc:
            if not exc.not_found:
                raise
    await _ensure_finalizer(ctx, key, body, want=False)
    log.info("environment %s deleted; namespace(s) %s retained and unlabelled", key.name, sorted(names))
