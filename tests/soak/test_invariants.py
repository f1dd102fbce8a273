"""The soak's checker judges correctly: it sees each kind of violation and none where there is none.

Pure tests over hand-built snapshots (no cluster): a checker that cannot fail proves nothing.
"""

from __future__ import annotations

import random
from typing import Any

from tests.soak.driver import Ledger, app_spec, env_spec
from tests.soak.invariants import Snapshot, check_desired, check_ledger, check_views, expected_children

ENV = "dev"
APP = "app-01"
APP_KEY = f"ChoreoApp/{ENV}/{APP}"
ENV_KEY = f"Environment/{ENV}"


def cluster_object(
    kind: str, name: str, spec: dict[str, Any], namespace: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": 2}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": kind,
        "metadata": meta,
        "spec": spec,
        "status": {"phase": "Ready", "observedGeneration": 2}
        | ({"ready": "1/1", "revision": 7} if kind == "ChoreoApp" else {}),
    }


def converged_snapshot() -> Snapshot:
    espec = env_spec(ENV)
    aspec = {**app_spec(random.Random(1), APP), "environment": ENV}
    snap = Snapshot()
    snap.cp_envs[ENV_KEY] = {"name": ENV, "spec": espec}
    snap.cp_apps[APP_KEY] = {
        "name": APP,
        "spec": aspec,
        "status": {"phase": "Ready", "ready": "1/1", "revision": 7},
    }
    # the API server fills in the CRD defaults: still the same desired state
    snap.envs[ENV_KEY] = cluster_object("Environment", ENV, {**espec, "deletionPolicy": "Delete"})
    snap.apps[APP_KEY] = cluster_object("ChoreoApp", APP, {**aspec, "suspend": False}, f"choreo-{ENV}")
    return snap


def test_a_converged_snapshot_has_no_violations() -> None:
    snap = converged_snapshot()
    assert check_desired(snap) == []
    assert check_views(snap) == []
    assert check_ledger(snap, Ledger({APP_KEY: "present", ENV_KEY: "present"}), {APP_KEY}) == []


def test_missing_extra_and_edited_objects_are_violations() -> None:
    snap = converged_snapshot()
    snap.apps[APP_KEY]["spec"]["image"] = "ghcr.io/acme/hand-edited:6.6.6"
    snap.apps["ChoreoApp/dev/stray"] = cluster_object(
        "ChoreoApp", "stray", snap.apps[APP_KEY]["spec"], "choreo-dev"
    )
    del snap.envs[ENV_KEY]
    found = check_desired(snap)
    assert any(v.startswith(f"{APP_KEY}: cluster spec differs: image") for v in found), found
    assert any(v.startswith("ChoreoApp/dev/stray: in the cluster, not desired") for v in found), found
    assert any(v.startswith(f"{ENV_KEY}: desired by the control plane, absent") for v in found), found


def test_orphans_stale_status_and_untruthful_views_are_violations() -> None:
    snap = converged_snapshot()
    snap.apps[APP_KEY]["metadata"]["annotations"] = {"choreo.dev/orphaned": "mass_deletion"}
    snap.envs[ENV_KEY]["status"]["phase"] = "Pending"
    snap.cp_apps[APP_KEY]["status"]["phase"] = "Progressing"
    found = check_desired(snap)
    assert any("held as an orphan" in v for v in found), found
    assert any(v.startswith(f"{ENV_KEY}: phase 'Pending'") for v in found), found
    assert check_views(snap) == [
        f"{APP_KEY}: control plane view differs from the cluster: phase: cp 'Progressing', cluster 'Ready'"
    ]


def test_a_lost_acknowledged_write_is_a_violation() -> None:
    snap = converged_snapshot()
    del snap.cp_apps[APP_KEY]
    del snap.apps[APP_KEY]
    found = check_ledger(snap, Ledger({APP_KEY: "present", "ChoreoApp/dev/gone": "absent"}), {APP_KEY})
    assert found == [f"{APP_KEY}: the control plane acknowledged its put last, but no longer has it"]


def test_children_are_rendered_for_every_app_and_environment() -> None:
    manifests, problems = expected_children(converged_snapshot())
    assert problems == []
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Namespace", "LimitRange", "ServiceAccount", "NetworkPolicy"} <= kinds
