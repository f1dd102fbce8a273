"""Discovery through the kubernetes client and kubectl."""

from __future__ import annotations

from kubernetes import client


def test_version_and_core_resources(api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    assert version.major == "1"
    core = client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in core.resources}
    assert by_name["namespaces"].namespaced is False
    assert by_name["configmaps"].namespaced is True
    assert "cm" in (by_name["configmaps"].short_names or [])
    assert {"create", "get", "list", "watch", "patch", "update", "delete"} <= set(by_name["secrets"].verbs)
    assert "pods/status" in by_name


def test_groups_listed(api: client.ApiClient) -> None:
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    for name in (
        "apps",
        "batch",
        "autoscaling",
        "policy",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "events.k8s.io",
    ):
        assert name in groups, name
    assert groups["apps"].preferred_version.group_version == "apps/v1"
    apps = client.AppsV1Api(api).get_api_resources()
    assert apps.group_version == "apps/v1"
    deploy = next(r for r in apps.resources if r.name == "deployments")
    assert deploy.kind == "Deployment" and deploy.namespaced and "deploy" in deploy.short_names


def test_kubectl_api_resources(kubectl) -> None:  # type: ignore[no-untyped-def]
    out = kubectl("api-resources", "--no-headers").stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"deployments", "configmaps", "cronjobs", "customresourcedefinitions", "leases"} <= names
