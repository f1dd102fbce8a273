"""kubectl (the one built with the real control plane) end to end: apply (client- and server-side), get (tables, categories, yaml), patch, delete, watch."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.conformance.helpers import CRD_DIR, install_crds, raw, unique, wait_for
from tests.fixtures.kube import KubeTarget, kubectl_binary

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}


def _manifest(ns: str, app: str) -> str:
    docs = [
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "ChoreoApp",
            "metadata": {"name": app, "namespace": ns},
            "spec": {
                "environment": "dev",
                "project": "demo",
                "type": "service",
                "image": "nginx:1.25",
                "endpoints": [{"name": "http", "port": 8080, "protocol": "REST", "visibility": "Public"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app, "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": app}},
                "template": {
                    "metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
                },
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def test_apply_crds_from_repo(kubectl: Kubectl) -> None:
    out = kubectl("apply", "-f", str(CRD_DIR)).stdout
    assert "choreoapps.choreo.dev" in out


def test_apply_get_patch_delete(kubectl: Kubectl, api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    app = unique("hello")
    out = kubectl("apply", "-f", "-", input=_manifest(ns, app)).stdout
    assert f"choreoapp.choreo.dev/{app} created" in out and f"deployment.apps/{app} created" in out
    again = kubectl("apply", "-f", "-", input=_manifest(ns, app)).stdout
    assert f"deployment.apps/{app} unchanged" in again
    table = kubectl("get", "capp", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "ENVIRONMENT", "TYPE", "READY", "STATUS", "ROLLOUT", "URL", "AGE"]
    assert any(line.split()[:3] == [app, "dev", "service"] for line in table[1:])
    wide = kubectl("get", "choreoapps", app, "-n", ns, "-o", "wide").stdout
    assert "IMAGE" in wide.splitlines()[0]
    cat = kubectl("get", "choreo", "-n", ns).stdout
    assert f"choreoapp.choreo.dev/{app}" in cat
    doc = yaml.safe_load(kubectl("get", "capp", app, "-n", ns, "-o", "yaml").stdout)
    assert doc["kind"] == "ChoreoApp" and doc["spec"]["replicas"] == 1
    kubectl("patch", "capp", app, "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":3}}')
    kubectl(
        "patch",
        "deployment",
        app,
        "-n",
        ns,
        "-p",
        '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}}}',
    )
    dep = yaml.safe_load(kubectl("get", "deploy", app, "-n", ns, "-o", "yaml").stdout)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26"
    assert dep["metadata"]["generation"] == 2
    kubectl(
        "patch",
        "capp",
        app,
        "-n",
        ns,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/replicas","value":2}]',
    )
    assert kubectl("get", "capp", app, "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "2"
    all_ns = kubectl("get", "capp", "-A").stdout.splitlines()
    assert all_ns[0].split()[0] == "NAMESPACE" and any(line.split()[:2] == [ns, app] for line in all_ns[1:])
    out = kubectl("delete", "-f", "-", input=_manifest(ns, app)).stdout
    assert f'choreoapp.choreo.dev "{app}" deleted' in out
    missing = kubectl("get", "capp", app, "-n", ns, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_server_side_apply_with_kubectl(kubectl: Kubectl, api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    app = unique("ssa")
    out = kubectl("apply", "--server-side", "-f", "-", input=_manifest(ns, app)).stdout
    assert "serverside-applied" in out
    dep = yaml.safe_load(
        kubectl("get", "deploy", app, "-n", ns, "-o", "yaml", "--show-managed-fields").stdout
    )
    managers = {e["manager"]: e["operation"] for e in dep["metadata"]["managedFields"]}
    assert managers.get("kubectl") == "Apply"
    kubectl(
        "patch",
        "deploy",
        app,
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"replicas":5}}',
        "--field-manager=scaler",
    )
    conflict = kubectl("apply", "--server-side", "-f", "-", input=_manifest(ns, app), check=False)
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_manifest(ns, app))
    assert kubectl("get", "deploy", app, "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "2"


def test_builtin_tables(kubectl: Kubectl, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "tbl"}, "data": {"a": "1", "b": "2"}})
    lines = kubectl("get", "cm", "tbl", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "DATA", "AGE"] and lines[1].split()[:2] == ["tbl", "2"]
    kubectl(
        "create",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "tbl", "namespace": ns},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "x:1"}]},
                    },
                },
            }
        ),
    )
    header = kubectl("get", "deploy", "-n", ns).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert kubectl("get", "ns", ns).stdout.splitlines()[1].split()[1] == "Active"


def test_table_response_evaluates_printer_columns(api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    custom = client.CustomObjectsApi(api)
    name = unique("tab")
    custom.create_namespaced_custom_object(
        "choreo.dev",
        "v1alpha1",
        ns,
        "choreoapps",
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "ChoreoApp",
            "metadata": {"name": name},
            "spec": {"environment": "dev", "project": "p", "type": "worker", "image": "busybox:1"},
        },
    )
    custom.patch_namespaced_custom_object_status(
        "choreo.dev",
        "v1alpha1",
        ns,
        "choreoapps",
        name,
        {
            "status": {
                "phase": "Ready",
                "ready": "1/1",
                "endpoints": [{"name": "http", "visibility": "Public", "url": "https://x.example"}],
                "rollout": {"phase": "Progressing", "step": 1, "weight": 25, "summary": "Canary 25%"},
            }
        },
    )
    status, body, _ = raw(
        api, "GET", f"/apis/choreo.dev/v1alpha1/namespaces/{ns}/choreoapps/{name}", headers=TABLE
    )
    assert status == 200 and body["kind"] == "Table" and body["apiVersion"] == "meta.k8s.io/v1"
    cols = [c["name"] for c in body["columnDefinitions"]]
    assert cols[:7] == ["Name", "Environment", "Type", "Ready", "Status", "Rollout", "URL"]
    cells = body["rows"][0]["cells"]
    assert cells[:7] == [name, "dev", "worker", "1/1", "Ready", "Canary 25%", "https://x.example"]
    assert body["rows"][0]["object"]["metadata"]["name"] == name


def test_get_watch(kube_target: KubeTarget, core: client.CoreV1Api, ns: str, tmp_path: Path) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "watched"}})
    env = dict(os.environ, KUBECONFIG=str(kube_target.kubeconfig), KUBECACHEDIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [kubectl_binary(), "get", "cm", "-n", ns, "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("watched") for line in lines), timeout=20, what="initial row")
        core.patch_namespaced_config_map("watched", ns, {"data": {"k": "v"}})
        wait_for(
            lambda: sum(1 for line in lines if line.startswith("watched")) >= 2, timeout=20, what="update row"
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert lines[0].split()[:2] == ["NAME", "DATA"]
    rows = [line.split() for line in lines if line.startswith("watched")]
    assert rows[0][1] == "0" and rows[-1][1] == "1"


# Built-in kinds only: gateway.networking.k8s.io (HTTPRoute) exists on a real cluster only once
# the Gateway API CRDs are installed (see docs/emulator-fidelity.md).
@pytest.mark.parametrize(
    "resource", ["deployments", "cronjobs", "ingresses", "horizontalpodautoscalers", "leases"]
)
def test_kubectl_lists_builtin_kinds(kubectl: Kubectl, resource: str, ns: str) -> None:
    proc = kubectl("get", resource, "-n", ns)
    assert proc.returncode == 0


def test_typed_create_subcommands_and_scale(kubectl: Kubectl, api: client.ApiClient) -> None:
    ns = unique("typed")
    kubectl("create", "namespace", ns)
    kubectl("create", "configmap", "c1", "-n", ns, "--from-literal=a=b")
    kubectl("create", "secret", "generic", "s1", "-n", ns, "--from-literal=pw=x")
    kubectl(
        "create",
        "secret",
        "docker-registry",
        "reg",
        "-n",
        ns,
        "--docker-server=r.example",
        "--docker-username=u",
        "--docker-password=p",
    )
    kubectl("create", "serviceaccount", "bot", "-n", ns)
    core = client.CoreV1Api(api)
    assert core.read_namespaced_config_map("c1", ns).data == {"a": "b"}
    assert core.read_namespaced_secret("s1", ns).type == "Opaque"
    assert core.read_namespaced_secret("reg", ns).type == "kubernetes.io/dockerconfigjson"
    assert core.read_namespaced_service_account("bot", ns).metadata.name == "bot"
    wait_for(lambda: core.read_namespaced_service_account("default", ns), what="default service account")
    assert kubectl("auth", "can-i", "get", "pods", "-n", ns).stdout.strip() == "yes"
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "scaled", "namespace": ns},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "x:1"}]},
                    },
                },
            }
        ),
    )
    kubectl("scale", "deployment", "scaled", "-n", ns, "--replicas=3")
    assert client.AppsV1Api(api).read_namespaced_deployment("scaled", ns).spec.replicas == 3
    kubectl("delete", "namespace", ns, "--wait=false")


def test_kubectl_apply_rejects_unknown_fields(kubectl: Kubectl, api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    doc = yaml.safe_load(_manifest(ns, unique("strict")).split("---")[0])
    doc["spec"]["notAField"] = True
    proc = kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "notAField" in proc.stderr
