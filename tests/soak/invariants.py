"""What must hold once the faults stop: one pass over the control plane and the cluster, returning
every violation found (an empty list: converged).

1. The cluster's Environments and ChoreoApps of the soak's dataplane are exactly the control
   plane's desired objects: the same keys, and specs equal as the agent compares them
   (``choreo_dp.agent.semantic``: both read through the spec models, defaults dropped).
2. Every child (Deployment, Service, HPA, PDB, HTTPRoute, Namespace, LimitRange, NetworkPolicy,
   ServiceAccount, ...) carries its render (``choreo_dp.render``), compared as the operator compares
   (``choreo_dp.operator.drift.contains``), and every app and Environment is Ready for its spec.
3. Nothing acknowledged was lost: a key the driver's last answered request put is desired, one it
   deleted is not, and an app once Ready that is still desired exists in the cluster.
4. No part is down: control plane, operator and agent answer /healthz, every cluster component
   runs, and both the control plane and the DataPlane resource say the agent is connected.
5. The control plane's view of each app (phase, ready, revision) is what the cluster says.
6. No orphans: the control plane keeps its database, so no rule of the safety planner applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError

from choreo_dp.agent.semantic import semantic_hash
from choreo_dp.api import ChoreoApp, ChoreoAppSpec, Environment, EnvironmentSpec
from choreo_dp.api import vocabulary as V
from choreo_dp.kube import KubeClient, Resource
from choreo_dp.kube import resources as R
from choreo_dp.operator.drift import contains
from choreo_dp.render import ClusterCapabilities, RenderError, render_app, render_environment
from tests.soak.driver import Ledger, app_key, env_key
from tests.soak.rig import DATAPLANE, PARTS, Rig, bounded

# RealCluster installs the Gateway API CRDs, so the operator exposes endpoints through HTTPRoutes.
CAPABILITIES = ClusterCapabilities(gateway_api=True)
STATUS_FIELDS = ("phase", "ready", "revision")


def normalised(kind: str, spec: Any, environment: str | None = None) -> Any:
    """The spec as the agent's :func:`semantic_hash` reads it (to show *what* differs)."""
    body = dict(spec) if isinstance(spec, dict) else spec
    if kind == "ChoreoApp" and isinstance(body, dict) and environment is not None:
        body.setdefault("environment", environment)
    model = ChoreoAppSpec if kind == "ChoreoApp" else EnvironmentSpec
    try:
        return model.model_validate(body).model_dump(mode="json", by_alias=True, exclude_defaults=True)
    except ValidationError as exc:
        return {"<invalid>": str(exc)[:200]}


def spec_difference(desired: Any, live: Any) -> str:
    """The top-level fields that differ, with both values (short)."""
    if not isinstance(desired, dict) or not isinstance(live, dict):
        return f"{desired!r} != {live!r}"
    fields = sorted(k for k in set(desired) | set(live) if desired.get(k) != live.get(k))
    return "; ".join(f"{k}: desired {desired.get(k)!r}, cluster {live.get(k)!r}"[:200] for k in fields)


@dataclass
class Snapshot:
    cp_envs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cp_apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataplane: dict[str, Any] = field(default_factory=dict)
    envs: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> cluster object
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataplane_cr: dict[str, Any] | None = None


async def read_control_plane(cp: httpx.AsyncClient, snap: Snapshot) -> None:
    base = f"/api/v1/dataplanes/{DATAPLANE}"
    r = await cp.get(base)
    r.raise_for_status()
    snap.dataplane = r.json()
    r = await cp.get(f"{base}/environments")
    r.raise_for_status()
    for env in r.json()["items"]:
        snap.cp_envs[env_key(env["name"])] = env
        apps = await cp.get(f"{base}/environments/{env['name']}/apps")
        apps.raise_for_status()
        for app in apps.json()["items"]:
            snap.cp_apps[app_key(env["name"], app["name"])] = app


async def read_cluster(kube: KubeClient, snap: Snapshot) -> None:
    selector = {V.DATAPLANE_LABEL: DATAPLANE}
    envs, _ = await kube.list(R.ENVIRONMENTS, label_selector=selector)
    for env in envs:
        snap.envs[env_key(env["metadata"]["name"])] = {
            **env,
            "kind": "Environment",
            "apiVersion": V.API_VERSION,
        }
    apps, _ = await kube.list(R.CHOREOAPPS, label_selector=selector)
    for app in apps:
        env = (app.get("spec") or {}).get("environment", "?")
        snap.apps[app_key(env, app["metadata"]["name"])] = {
            **app,
            "kind": "ChoreoApp",
            "apiVersion": V.API_VERSION,
        }
    snap.dataplane_cr = await kube.get(R.DATAPLANES, DATAPLANE)


def check_desired(snap: Snapshot) -> list[str]:
    out = []
    for kind, desired, live in (
        ("Environment", snap.cp_envs, snap.envs),
        ("ChoreoApp", snap.cp_apps, snap.apps),
    ):
        for key in sorted(set(desired) - set(live)):
            out.append(f"{key}: desired by the control plane, absent from the cluster")
        for key in sorted(set(live) - set(desired)):
            out.append(f"{key}: in the cluster, not desired by the control plane")
        for key in sorted(set(desired) & set(live)):
            env = key.split("/")[1]
            want, have = desired[key]["spec"], live[key].get("spec")
            # equal as the agent judges its inventory (issue 14: hashes of normalised cluster specs)
            if semantic_hash(kind, want, env) is None or semantic_hash(kind, want, env) != semantic_hash(
                kind, have, env
            ):
                diff = spec_difference(normalised(kind, want, env), normalised(kind, have, env))
                out.append(f"{key}: cluster spec differs: {diff}")
    for key, obj in sorted({**snap.envs, **snap.apps}.items()):
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            out.append(f"{key}: being deleted in the cluster")
        if V.ORPHANED_ANNOTATION in (meta.get("annotations") or {}):
            out.append(f"{key}: held as an orphan ({meta['annotations'][V.ORPHANED_ANNOTATION]})")
        status = obj.get("status") or {}
        if status.get("phase") != "Ready":
            out.append(f"{key}: phase {status.get('phase')!r} ({str(status.get('message', ''))[:160]})")
        elif key.startswith("ChoreoApp/") and status.get("observedGeneration") != meta.get("generation"):
            out.append(
                f"{key}: status describes generation {status.get('observedGeneration')}, spec is at {meta.get('generation')}"
            )
    return out


def _spec_only(body: dict[str, Any]) -> dict[str, Any]:
    """What rendering reads: the status (possibly written by another operator version) is not."""
    return {k: v for k, v in body.items() if k != "status"}


def expected_children(snap: Snapshot) -> tuple[list[dict[str, Any]], list[str]]:
    """Every child the renderers produce for the cluster's objects (and what could not be rendered)."""
    manifests: list[dict[str, Any]] = []
    problems: list[str] = []
    models: dict[str, Environment] = {}
    for key, body in sorted(snap.envs.items()):
        try:
            models[body["metadata"]["name"]] = Environment.model_validate(_spec_only(body))
        except ValidationError as exc:
            problems.append(f"{key}: not a valid Environment: {str(exc)[:160]}")
    for key, body in sorted(snap.apps.items()):
        try:
            app = ChoreoApp.model_validate(_spec_only(body))
        except ValidationError as exc:
            problems.append(f"{key}: not a valid ChoreoApp: {str(exc)[:160]}")
            continue
        env = models.get(app.spec.environment)
        if env is None:
            continue  # reported by check_desired (its Environment is missing)
        try:
            manifests.extend(render_app(app, env, CAPABILITIES).manifests)
        except RenderError as exc:
            problems.append(f"{key}: cannot be rendered: {exc}")
    for name, env in sorted(models.items()):
        projects = [
            a["spec"]["project"]
            for a in snap.apps.values()
            if (a.get("spec") or {}).get("environment") == name
        ]
        try:
            manifests.extend(render_environment(env, projects=projects))
        except RenderError as exc:
            problems.append(f"{env_key(name)}: cannot be rendered: {exc}")
    return manifests, problems


async def check_children(kube: KubeClient, snap: Snapshot) -> list[str]:
    manifests, out = expected_children(snap)
    live: dict[tuple[str, str, str], dict[str, Any]] = {}
    resources: dict[str, Resource] = {}
    for m in manifests:
        res = R.for_kind(m["apiVersion"], m["kind"])
        resources[res.plural] = res
    for res in resources.values():
        items, _ = await kube.list(res)
        for item in items:
            meta = item["metadata"]
            live[(res.kind, meta.get("namespace") or "", meta["name"])] = item
    for m in manifests:
        meta = m["metadata"]
        where = f"{m['kind']} {meta.get('namespace') or ''}/{meta['name']}".replace(" /", " ")
        have = live.get((m["kind"], meta.get("namespace") or "", meta["name"]))
        if have is None:
            out.append(f"child {where}: missing")
        elif not contains(have, m):
            out.append(f"child {where}: differs from its render")
    return out


def check_ledger(snap: Snapshot, ledger: Ledger, seen_ready: set[str]) -> list[str]:
    out = []
    desired = set(snap.cp_envs) | set(snap.cp_apps)
    for key, state in sorted(ledger.state.items()):
        if state == "present" and key not in desired:
            out.append(f"{key}: the control plane acknowledged its put last, but no longer has it")
        if state == "absent" and key in desired:
            out.append(f"{key}: the control plane acknowledged its delete last, but still has it")
        if (
            state == "present"
            and key in seen_ready
            and key in desired
            and key not in {**snap.apps, **snap.envs}
        ):
            out.append(f"{key}: was Ready, is still desired, and is gone from the cluster")
    return out


async def check_processes(rig: Rig, snap: Snapshot) -> list[str]:
    out = []
    for part in PARTS:
        ok, detail = await rig.healthy(part)
        if not ok:
            out.append(f"{part}: not healthy ({detail})")
    for name in rig.cluster_down():
        out.append(f"cluster component {name} is not running")
    dp = snap.dataplane
    if not dp.get("connected"):
        out.append("control plane: dataplane not connected")
    if not dp.get("inSync"):
        out.append(
            f"control plane: dataplane not in sync (revision {dp.get('revision')}, applied "
            f"{dp.get('appliedRevision')}, reason {dp.get('syncReason')!r}, refused {dp.get('refused')}, "
            f"inventory {dp.get('inventory')}, desired digest {dp.get('desiredDigest')})"
        )
    if dp.get("orphans") or dp.get("orphanedKeys"):
        out.append(f"control plane: {dp.get('orphans')} orphan(s) reported: {dp.get('orphanedKeys')}")
    cr_status = (snap.dataplane_cr or {}).get("status") or {}
    if cr_status.get("connected") is not True:
        out.append(f"DataPlane {DATAPLANE}: status.connected is {cr_status.get('connected')!r}")
    if cr_status.get("orphans"):
        out.append(f"DataPlane {DATAPLANE}: status.orphans is {cr_status.get('orphans')}")
    return out


def check_views(snap: Snapshot) -> list[str]:
    out = []
    for key in sorted(set(snap.cp_apps) & set(snap.apps)):
        view = snap.cp_apps[key].get("status") or {}
        actual = snap.apps[key].get("status") or {}
        differs = [
            f"{f}: cp {view.get(f)!r}, cluster {actual.get(f)!r}"
            for f in STATUS_FIELDS
            if view.get(f) != actual.get(f)
        ]
        if differs:
            out.append(f"{key}: control plane view differs from the cluster: {'; '.join(differs)}")
    return out


async def violations(rig: Rig, ledger: Ledger, seen_ready: set[str]) -> list[str]:
    """Every invariant, checked once."""
    assert rig.kube is not None
    snap = Snapshot()
    try:
        async with rig.cp_client() as cp:
            await bounded(read_control_plane(cp, snap), 30)
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        return [f"control plane unreadable: {type(exc).__name__}: {exc}"]
    try:
        await bounded(read_cluster(rig.kube, snap), 30)
        children = await bounded(check_children(rig.kube, snap), 60)
    except Exception as exc:  # an unreadable cluster is one more violation, reported as such
        return [f"cluster unreadable: {type(exc).__name__}: {exc}"]
    return [
        *check_desired(snap),
        *children,
        *check_ledger(snap, ledger, seen_ready),
        *await check_processes(rig, snap),
        *check_views(snap),
    ]


async def ready_keys(kube: KubeClient) -> set[str]:
    """The soak's apps the cluster shows Ready now (the monitor's sample)."""
    apps, _ = await kube.list(R.CHOREOAPPS, label_selector={V.DATAPLANE_LABEL: DATAPLANE})
    return {
        app_key(a["spec"]["environment"], a["metadata"]["name"])
        for a in apps
        if (a.get("status") or {}).get("phase") == "Ready"
    }
