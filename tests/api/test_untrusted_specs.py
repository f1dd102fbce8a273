"""Issue 12, finding 8: images and quantities a hostile spec may carry, refused at every edge.

The models are what the control plane's REST API, the agent and the operator validate with;
the CRD schema is what the apiserver itself enforces on anything written to the cluster, by
the agent or by hand. Each refusal is checked on both, the schema on the emulated API and on
the real kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from pydantic import ValidationError

from choreo_dp.api import ChoreoApp, Environment
from tests.conformance.helpers import api_client, choreo_app, install_crds, raw, unique
from tests.fixtures.kube import KubeTarget

from .samples import app

TRAVERSAL = "docker.io/library/../../evil/x"


def _app(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "a", "namespace": "choreo-dev"}, "spec": app(**spec)}


def _env(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "dev"}, "spec": spec}


@pytest.mark.parametrize(
    "image",
    [
        TRAVERSAL,
        "ghcr.io/acme/./x",
        "ghcr.io/Acme/x",
        "ghcr.io/acme/x@sha256:abc",
        "ghcr.io/acme/x@md5:" + "a" * 32,
    ],
)
def test_the_model_refuses_images_that_are_not_references(image: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChoreoApp.model_validate(_app(image=image))
    assert "image" in str(info.value)


@pytest.mark.parametrize("cpu", ["1Zz", "lots", "1K", "1e", "-1", "8Ei", True])
def test_the_model_refuses_quantities_kubernetes_would_not_parse(cpu: object) -> None:
    with pytest.raises(ValidationError) as info:
        ChoreoApp.model_validate(_app(resources={"limits": {"cpu": cpu}}))
    assert "resources.limits.cpu" in str(info.value)
    with pytest.raises(ValidationError) as info:
        Environment.model_validate(_env(quota={"cpu": cpu}))
    assert "quota.cpu" in str(info.value)


def test_quantities_are_stored_in_the_apiservers_canonical_form() -> None:
    spec = ChoreoApp.model_validate(
        _app(
            resources={"requests": {"cpu": 0.25, "memory": "0.5Gi"}, "limits": {"cpu": 2, "memory": "1024Mi"}}
        )
    ).spec
    assert spec.to_k8s()["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    env = Environment.model_validate(_env(quota={"cpu": "1.5", "memory": "2048Mi", "pods": 10}))
    assert env.spec.quota is not None and (env.spec.quota.cpu, env.spec.quota.memory) == ("1500m", "2Gi")


def test_requests_above_limits_are_refused() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        ChoreoApp.model_validate(_app(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}))
    ok = ChoreoApp.model_validate(
        _app(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}})
    )
    assert ok.spec.resources is not None


@pytest.mark.parametrize(
    "entry", ["acme/", "nginx", "ghcr.io/acme/*", "ghcr.io/acme/app:1", "ghcr.io/../x", "ghcr.io/Acme/"]
)
def test_the_model_refuses_allowlist_entries_that_are_not_registry_paths(entry: str) -> None:
    with pytest.raises(ValidationError) as info:
        Environment.model_validate(_env(registry={"allowedPrefixes": [entry]}))
    assert "allowedPrefixes" in str(info.value)


def test_the_model_keeps_valid_allowlist_entries_as_written() -> None:
    entries = ["*", "ghcr.io/acme/", "registry.example.com:5000", "docker.io/library/"]
    env = Environment.model_validate(_env(registry={"allowedPrefixes": entries}))
    assert env.spec.registry is not None and env.spec.registry.allowed_prefixes == entries


# -- the apiserver's own check of the CRD schema --------------------------------------------


@pytest.fixture(scope="module")
def api(kube_target: KubeTarget) -> Iterator[client.ApiClient]:
    c = api_client(kube_target.kubeconfig)
    install_crds(c)
    yield c
    c.close()


def _create(api: client.ApiClient, obj: dict[str, Any]) -> tuple[int, Any]:
    # dryRun: the apiserver validates fully and stores nothing, so the shared cluster stays clean.
    if obj["kind"] == "ChoreoApp":
        path = "/apis/choreo.dev/v1alpha1/namespaces/default/choreoapps"
    else:
        path = "/apis/choreo.dev/v1alpha1/environments"
    status, body, _ = raw(api, "POST", path, query={"dryRun": "All"}, body=obj)
    return status, body


def _environment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": unique("env")},
        "spec": spec,
    }


def _fields(body: Any) -> set[str]:
    return {c.get("field", "") for c in (body.get("details") or {}).get("causes") or []}


@pytest.mark.parametrize("cpu", ["1Zz", "lots", "1K", "1e", "-1", "1.5e1.5", " 1"])
def test_the_apiserver_refuses_bad_quantities(api: client.ApiClient, cpu: str) -> None:
    status, body = _create(api, choreo_app(unique("q"), "default", resources={"limits": {"cpu": cpu}}))
    assert status == 422, body
    assert "spec.resources.limits.cpu" in _fields(body), body
    status, body = _create(api, _environment(quota={"cpu": cpu, "memory": "1Gi"}))
    assert status == 422, body
    assert "spec.quota.cpu" in _fields(body), body


@pytest.mark.parametrize("cpu", ["1500m", "2", 2, "0.5", ".5", "1e3", "+1"])
def test_the_apiserver_accepts_quantities_as_int_or_string(api: client.ApiClient, cpu: object) -> None:
    status, body = _create(
        api, choreo_app(unique("q"), "default", resources={"limits": {"cpu": cpu, "memory": "1.5Gi"}})
    )
    assert status == 201, body
    assert body["spec"]["resources"]["limits"]["cpu"] == cpu, "a custom resource keeps what it was sent"
    status, body = _create(api, _environment(quota={"cpu": cpu, "memory": 1073741824}))
    assert status == 201, body


@pytest.mark.parametrize(
    "image", [TRAVERSAL, "ghcr.io/acme/./x", "ghcr.io/Acme/x", "ghcr.io/acme/x:", "ghcr.io//x"]
)
def test_the_apiserver_refuses_images_that_are_not_references(api: client.ApiClient, image: str) -> None:
    status, body = _create(api, choreo_app(unique("i"), "default", image=image))
    assert status == 422, body
    assert "spec.image" in _fields(body), body


@pytest.mark.parametrize(
    "image", ["nginx", "nginx:1.25", "localhost:5000/a/b:dev", "ghcr.io/acme/x@sha256:" + "0" * 64]
)
def test_the_apiserver_accepts_references(api: client.ApiClient, image: str) -> None:
    status, body = _create(api, choreo_app(unique("i"), "default", image=image))
    assert status == 201, body
