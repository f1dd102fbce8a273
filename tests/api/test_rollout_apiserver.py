"""spec.rollout and status.rollout as the apiserver stores them, and the canary layout it accepts.

Run against the emulated API and the real kube-apiserver: the CRD schema keeps every rollout
field (nothing pruned), refuses what the models refuse, ``kubectl get`` shows the rollout column,
and the Deployments and Services of the canary layout pass the apiserver's own validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from choreo_dp.api.rollout import RolloutStatus
from choreo_dp.render import render_app
from tests.conformance.helpers import api_client, choreo_app, install_crds, raw, unique
from tests.fixtures.kube import KubeTarget
from tests.render.cases import GATEWAY_API, INGRESS_ONLY, app, endpoint, environment

APPS = "/apis/choreo.dev/v1alpha1/namespaces/default/choreoapps"
CANARY = {
    "strategy": "Canary",
    "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "manual"}],
    "analysis": {"httpGet": {"path": "/healthz"}, "failureThreshold": 2, "interval": "5s"},
    "promote": 1,
    "abort": False,
}


@pytest.fixture(scope="module")
def api(kube_target: KubeTarget) -> Iterator[client.ApiClient]:
    c = api_client(kube_target.kubeconfig)
    install_crds(c)
    yield c
    c.close()


def _causes(body: Any) -> set[str]:
    return {c.get("field", "") for c in (body.get("details") or {}).get("causes") or []}


def test_a_canary_spec_is_stored_whole(api: client.ApiClient) -> None:
    status, body, _ = raw(
        api, "POST", APPS, query={"dryRun": "All"}, body=choreo_app(unique("c"), "default", rollout=CANARY)
    )
    assert status == 201, body
    assert body["spec"]["rollout"] == CANARY


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([{"weight": 0}], "spec.rollout.steps[0].weight"),
        ([{"weight": 101}], "spec.rollout.steps[0].weight"),
        ([{"weight": 10, "pause": "soon"}], "spec.rollout.steps[0].pause"),
    ],
)
def test_the_apiserver_refuses_bad_steps(
    api: client.ApiClient, steps: list[dict[str, Any]], field: str
) -> None:
    obj = choreo_app(unique("c"), "default", rollout={"strategy": "Canary", "steps": steps})
    status, body, _ = raw(api, "POST", APPS, query={"dryRun": "All"}, body=obj)
    assert status == 422, body
    assert field in _causes(body), body


def test_rollout_status_is_kept_and_shown_by_kubectl_get(api: client.ApiClient) -> None:
    name = unique("c")
    status, body, _ = raw(api, "POST", APPS, body=choreo_app(name, "default", rollout=CANARY))
    assert status == 201, body
    try:
        rollout = RolloutStatus(
            phase="Progressing",
            step=1,
            weight=25,
            stable_revision="0123456789abcdef",
            canary_revision="fedcba9876543210",
            started_at="2026-01-01T12:00:00Z",
            step_started_at="2026-01-01T12:00:00Z",
            last_check_at="2026-01-01T12:00:10Z",
            failures=1,
            restarts=2,
            message="check failed (1/2): canary readiness: 0/1 pods ready",
            summary="Canary 25%",
        ).to_k8s()
        patch = {"status": {"phase": "Progressing", "rollout": rollout}}
        status, body, _ = raw(
            api,
            "PATCH",
            f"{APPS}/{name}/status",
            body=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert status == 200, body
        assert body["status"]["rollout"] == rollout
        status, table, _ = raw(
            api, "GET", f"{APPS}/{name}", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
        )
        assert status == 200, table
        columns = [c["name"] for c in table["columnDefinitions"]]
        cells = dict(zip(columns, table["rows"][0]["cells"], strict=True))
        assert cells["Rollout"] == "Canary 25%"
    finally:
        raw(api, "DELETE", f"{APPS}/{name}")


@pytest.mark.parametrize("caps", [GATEWAY_API, INGRESS_ONLY], ids=["gateway", "ingress"])
def test_the_canary_layout_passes_the_apiservers_validation(api: client.ApiClient, caps: Any) -> None:
    spec: dict[str, Any] = {
        "replicas": 4,
        "endpoints": [endpoint("api", "Public")],
        "rollout": {"strategy": "Canary", "steps": [{"weight": 25}]},
    }
    stable = render_app(app(**spec), environment(), caps).workload["spec"]["template"]
    state = RolloutStatus(phase="Progressing", step=1, weight=25, stable_revision="a", canary_revision="b")
    rendered = render_app(
        app(**{**spec, "image": "registry.example.com/shop/orders:2"}),
        environment(),
        caps,
        rollout=state,
        stable_template=stable,
    )
    paths = {
        "Deployment": "/apis/apps/v1/namespaces/default/deployments",
        "Service": "/api/v1/namespaces/default/services",
    }
    checked = 0
    for manifest in rendered.manifests:
        if manifest["kind"] not in paths:
            continue
        obj = {
            **manifest,
            "metadata": {**manifest["metadata"], "namespace": "default", "ownerReferences": []},
        }
        status, body, _ = raw(api, "POST", paths[manifest["kind"]], query={"dryRun": "All"}, body=obj)
        assert status == 201, (manifest["metadata"]["name"], body)
        checked += 1
    assert checked == 5  # stable and canary Deployments, the app's Service and one per track
