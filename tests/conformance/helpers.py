"""Shared helpers for the conformance suite: real clients only."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client, config

from choreo_dp.kube import KubeClient
from choreo_sandbox.cluster import workload_faults
from tests import polling
from tests.fixtures.kube import KubeTarget

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# the suite's one polling helper; these tests use the kubernetes client's blocking calls
wait_for = partial(polling.eventually_blocking, timeout=15.0)


def raw(
    api: client.ApiClient,
    method: str,
    path: str,
    query: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """A request through the kubernetes client's transport; returns (status, decoded body, headers).

    Errors are returned, not raised, so tests can assert on Status bodies.
    """
    import json

    hdrs = {"Accept": "application/json", **(headers or {})}
    if body is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    m, url, hdrs2, body2, post = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=hdrs,
        body=body,
        auth_settings=["BearerToken"],
    )
    try:
        r = api.call_api(m, url, header_params=hdrs2, body=body2, post_params=post)
        status, data, rh = r.status, r.read(), dict(r.getheaders())
    except client.ApiException as exc:
        status, data, rh = exc.status, exc.body, dict(exc.headers or {})
    text = data.decode() if isinstance(data, bytes) else data
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = text
    return status, decoded, rh


def raw_text(api: client.ApiClient, path: str, query: dict[str, Any] | None = None) -> tuple[int, str]:
    """A GET whose body is text (``pods/log``); (status, body) with errors returned, not raised."""
    m, url, hdrs, body, post = api.param_serialize(
        "GET",
        path,
        query_params=list((query or {}).items()),
        header_params={"Accept": "*/*"},
        auth_settings=["BearerToken"],
    )
    try:
        r = api.call_api(m, url, header_params=hdrs, body=body, post_params=post, _request_timeout=30)
        status, data = r.status, r.read()
    except client.ApiException as exc:
        status, data = exc.status, exc.body
    return status, data.decode() if isinstance(data, bytes) else str(data or "")


def install_crds(api: client.ApiClient) -> None:
    """Create (or keep) the product's CRDs and wait until they are served."""
    import yaml

    ext = client.ApiextensionsV1Api(api)
    for f in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        try:
            ext.create_custom_resource_definition(doc)
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def served() -> bool:
        status, body, _ = raw(api, "GET", "/apis/choreo.dev/v1alpha1")
        return status == 200 and {"choreoapps", "environments", "dataplanes"} <= {
            r["name"] for r in body["resources"]
        }

    wait_for(served, what="choreo.dev CRDs to be served")


def choreo_app(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"environment": "dev", "project": "demo", "type": "service", "image": "nginx:1.25"}
    base.update(spec)
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def deployment(
    name: str, replicas: int = 1, image: str = "nginx:1.25", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    sel = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": sel},
            "template": {
                "metadata": {"labels": sel},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def set_pod_failure(
    target: KubeTarget, namespace: str, name: str, mode: str | None, timeout: float = 90.0
) -> None:
    """Make a Deployment's pods fail (``CrashLoopBackOff`` / ``ImagePullBackOff``) or heal (None).

    One knob for both targets: the workload simulator's on the emulator, a kwok Stage
    (``workload_faults.set_pod_failure``) on the real cluster.  Returns once every current pod
    of the Deployment shows the mode (Ready again for None), whichever the target.
    """
    if target.emulated:
        srv = target.server
        assert srv is not None
        target.run(lambda: srv.simulator.set_pod_failure(namespace, name, mode))
        api = api_client(target.kubeconfig)
        try:
            _wait_pods(api, namespace, name, mode, timeout)
        finally:
            api.close()
        return

    async def real() -> None:
        async with await KubeClient.from_kubeconfig(target.kubeconfig) as kube:
            await workload_faults.set_pod_failure(kube, namespace, name, mode, timeout=timeout)

    asyncio.run(real())


def _wait_pods(api: client.ApiClient, namespace: str, name: str, mode: str | None, timeout: float) -> None:
    want = mode or workload_faults.HEALTHY

    def settled() -> bool:
        _, dep, _ = raw(api, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
        _, pods, _ = raw(
            api, "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}
        )
        verdicts = [workload_faults.pod_verdict(p) for p in pods["items"]]
        live = [
            v
            for v, p in zip(verdicts, pods["items"], strict=True)
            if not p["metadata"].get("deletionTimestamp")
        ]
        return all(v == want for v in live) and len(live) >= int(dep["spec"].get("replicas", 1))

    wait_for(settled, timeout=timeout, what=f"pods of {namespace}/{name} to turn {want}")
