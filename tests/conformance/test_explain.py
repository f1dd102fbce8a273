"""`kubectl explain` and the OpenAPI v3 documents behind it, on the emulated and the real apiserver.

What explain prints for the product's kinds must be what the models say (the CRD schemas generated
from them); for a built-in kind what Kubernetes publishes. The side-by-side test runs the same
explain commands on a fresh emulator and on the session's real cluster and wants the same output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from choreo_dp.api.crdgen import all_crds
from kube_emulator import ApiServerThread
from tests.conformance.helpers import api_client, install_crds, raw, unique, wait_for
from tests.fixtures.kube import RealClusterProcess, kubectl_runner

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in all_crds().values()}


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _explained(text: str) -> dict[str, Any]:
    """The lines that matter: GROUP/KIND/VERSION, the FIELD line, the DESCRIPTION and the field names."""
    out: dict[str, Any] = {"fields": {}}
    section = ""
    description: list[str] = []
    for line in text.splitlines():
        head = re.match(r"^(GROUP|KIND|VERSION):\s+(\S+)$", line)
        if head:
            out[head.group(1).lower()] = head.group(2)
        elif line.startswith("FIELD: "):
            out["field"] = line[len("FIELD: ") :]
        elif line in ("DESCRIPTION:", "FIELDS:"):
            section = line
        elif section == "DESCRIPTION:" and line.startswith("    "):
            description.append(line.strip())
        elif section == "FIELDS:" and re.match(r"^  \S", line) and not line.startswith("  enum: "):
            name, _, kind = line.strip().partition("\t")
            out["fields"][name] = kind
    out["description"] = " ".join(d for d in description if d)
    return out


def _words(text: str) -> str:
    return " ".join(text.split())


def _published(api: client.ApiClient) -> bool:
    """Whether /openapi/v3 holds the product's CRD schemas as generated (a real apiserver publishes
    a new or changed CRD's schema asynchronously, some seconds after it is served)."""
    status, root, _ = raw(api, "GET", "/openapi/v3")
    url = (root or {}).get("paths", {}).get("apis/choreo.dev/v1alpha1", {}).get("serverRelativeURL")
    if status != 200 or not url:
        return False
    path, _, query = url.partition("?")
    status, doc, _ = raw(api, "GET", path, query=dict([query.split("=", 1)]))
    schemas = (doc or {}).get("components", {}).get("schemas", {})
    return status == 200 and all(
        _descriptions(schemas.get(f"dev.choreo.v1alpha1.{kind}", {}).get("properties", {}).get("spec", {}))
        == _descriptions(_schema(kind)["properties"]["spec"])
        for kind in CRDS
    )


def _descriptions(node: Any, path: str = "") -> dict[str, str]:
    """path -> description of every described node (what explain shows; the apiserver adds to the
    schema it publishes, e.g. anyOf for int-or-string, but keeps descriptions)."""
    if not isinstance(node, dict):
        return {}
    out = {path: node["description"]} if "description" in node else {}
    for name, sub in node.get("properties", {}).items():
        out.update(_descriptions(sub, f"{path}.{name}"))
    out.update(_descriptions(node.get("items"), f"{path}[]"))
    return out


@pytest.fixture(scope="module")
def crds_installed(api: client.ApiClient) -> None:
    install_crds(api)
    wait_for(lambda: _published(api), what="the CRD schemas in /openapi/v3", timeout=60.0, interval=0.5)


def test_explain_choreoapp_endpoints(kubectl: Kubectl, crds_installed: None) -> None:
    got = _explained(kubectl("explain", "choreoapp.spec.endpoints").stdout)
    endpoints = _schema("ChoreoApp")["properties"]["spec"]["properties"]["endpoints"]
    assert (got["group"], got["kind"], got["version"]) == ("choreo.dev", "ChoreoApp", "v1alpha1")
    assert got["field"] == "endpoints <[]Object>"
    assert got["description"].startswith(_words(endpoints["description"]))
    assert set(got["fields"]) == set(endpoints["items"]["properties"])
    assert got["fields"]["port"] == "<integer> -required-"


def test_explain_environment_spec(kubectl: Kubectl, crds_installed: None) -> None:
    out = kubectl("explain", "environments.spec").stdout
    got = _explained(out)
    spec = _schema("Environment")["properties"]["spec"]
    assert (got["kind"], got["field"]) == ("Environment", "spec <Object>")
    assert got["description"] == _words(spec["description"])
    assert set(got["fields"]) == set(spec["properties"])
    # every field is described: explain prints "<no description>" for one that is not
    assert "<no description>" not in out
    assert _words(spec["properties"]["deletionPolicy"]["description"]) in _words(out)


def test_explain_deployment_replicas(kubectl: Kubectl) -> None:
    got = _explained(kubectl("explain", "deployment.spec.replicas").stdout)
    assert (got["group"], got["kind"], got["version"]) == ("apps", "Deployment", "v1")
    assert got["field"] == "replicas <integer>"
    assert got["description"].startswith("Number of desired pods.")
    assert got["fields"] == {}


def test_explain_unknown_field_is_an_error(kubectl: Kubectl, crds_installed: None) -> None:
    proc = kubectl("explain", "choreoapp.spec.nosuchfield", check=False)
    assert proc.returncode != 0
    assert 'field "nosuchfield" does not exist' in proc.stderr


def test_a_crd_added_later_is_explained(kubectl: Kubectl, api: client.ApiClient) -> None:
    group = f"{unique('explain')}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "description": "What a gadget should be.",
                                    "properties": {
                                        "size": {"type": "integer", "description": "How big, in widgets."}
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    try:
        # A real apiserver publishes a new CRD's schema asynchronously; so may kubectl's cache lag.
        def explained() -> dict[str, Any] | None:
            proc = kubectl("explain", f"gadgets.{group}.spec.size", check=False)
            return _explained(proc.stdout) if proc.returncode == 0 else None

        got = wait_for(explained, what="kubectl explain of a new CRD", timeout=60.0, interval=1.0)
        assert got is not None
        assert (got["group"], got["kind"], got["field"]) == (group, "Gadget", "size <integer>")
        assert got["description"] == "How big, in widgets."
    finally:
        ext.delete_custom_resource_definition(f"gadgets.{group}")


def _get(api: client.ApiClient, path: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return raw(api, "GET", path, headers=headers or None)


def test_openapi_v3_discovery_and_hashes(api: client.ApiClient, crds_installed: None) -> None:
    status, root, _ = _get(api, "/openapi/v3")
    assert status == 200
    paths = root["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/choreo.dev/v1alpha1"} <= paths.keys()
    url = paths["apis/choreo.dev/v1alpha1"]["serverRelativeURL"]
    base, _, query = url.partition("?")
    assert base == "/openapi/v3/apis/choreo.dev/v1alpha1" and query.startswith("hash=")
    digest = query[len("hash=") :]

    status, doc, headers = raw(api, "GET", base, query={"hash": digest})
    assert status == 200
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["etag"] == f'"{digest}"'
    assert lowered["cache-control"] == "public, immutable"
    schemas = doc["components"]["schemas"]
    app = schemas["dev.choreo.v1alpha1.ChoreoApp"]
    assert app["x-kubernetes-group-version-kind"] == [
        {"group": "choreo.dev", "kind": "ChoreoApp", "version": "v1alpha1"}
    ]
    assert app["properties"]["spec"]["properties"]["endpoints"]["description"]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in schemas

    # A stale hash (a client holding an old URL) is sent on to the current document.
    status, moved, _ = raw(api, "GET", base, query={"hash": "0" * 128})
    assert status == 200 and moved == doc

    # Without a hash: the same document, not to be cached.
    status, same, headers = _get(api, base)
    assert status == 200 and same == doc
    assert {k.lower(): v for k, v in headers.items()}["cache-control"] == "no-cache, private"


def test_openapi_v3_unknown_group_version_is_404(api: client.ApiClient) -> None:
    status, _, _ = _get(api, "/openapi/v3/apis/nosuchgroup.example.com/v1")
    assert status == 404


def _crd_components(api: client.ApiClient) -> dict[str, Any]:
    _, root, _ = raw(api, "GET", "/openapi/v3")
    path, _, query = root["paths"]["apis/choreo.dev/v1alpha1"]["serverRelativeURL"].partition("?")
    _, doc, _ = raw(api, "GET", path, query=dict([query.split("=", 1)]))
    return {name: schema for name, schema in doc["components"]["schemas"].items() if name.startswith("dev.")}


def _explain_lines(run: Kubectl, query: str) -> list[str]:
    proc = run("explain", *query.split())
    return proc.stdout.splitlines()


SIDE_BY_SIDE = [
    "choreoapp.spec.endpoints",
    "environments.spec",
    "deployment.spec.replicas",
    "choreoapps --recursive",
    "dataplane.status",
    "deployment",
    "pod.spec.containers.resources --recursive",
    "hpa.spec",
    "selfsubjectaccessreview.spec",
    "crd.spec.versions.schema",
]


def test_explain_is_the_same_on_the_emulator_and_a_real_apiserver(
    real_cluster: RealClusterProcess, tmp_path: Path
) -> None:
    with ApiServerThread() as emulated:
        kubeconfig = emulated.server.write_kubeconfig(tmp_path / "emulator.kubeconfig")
        on_emulator = kubectl_runner(kubeconfig, tmp_path / "cache-emulator")
        on_real = kubectl_runner(real_cluster.kubeconfig, tmp_path / "cache-real")
        published = []
        for kubeconfig_path in (kubeconfig, real_cluster.kubeconfig):
            api = api_client(kubeconfig_path)
            try:
                install_crds(api)
                wait_for(lambda: _published(api), what="the CRD schemas", timeout=60.0, interval=0.5)  # noqa: B023
                published.append(_crd_components(api))
            finally:
                api.close()
        assert published[0] == published[1], "the CRD schemas published in /openapi/v3 differ"
        differ = [
            query
            for query in SIDE_BY_SIDE
            if _explain_lines(on_emulator, query) != _explain_lines(on_real, query)
        ]
        assert not differ, f"kubectl explain differs between emulator and real apiserver for {differ}"


def test_builtin_schemas_are_generated_from_the_pinned_kubernetes() -> None:
    """openapi_builtin.json.gz is what openapi_gen makes from the k8s.io/kubernetes the tests build."""
    import gzip
    import json
    import os

    from kube_emulator import openapi_gen

    gomod = (Path(__file__).resolve().parents[2] / "tools/kube/kubernetes/go.mod").read_text()
    version = re.search(r"^require k8s.io/kubernetes (v\S+)$", gomod, re.M)
    assert version is not None
    modcache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go/pkg/mod")
    source = openapi_gen.spec_dir(modcache, version.group(1))
    if not source.is_dir():
        pytest.skip(f"{source} absent: tools/kube/build.py has not filled this Go module cache")
    committed = json.loads(gzip.decompress(openapi_gen.OUTPUT.read_bytes()))
    assert committed == openapi_gen.collect(source), (
        "openapi_builtin.json.gz is stale: python -m kube_emulator.openapi_gen --sources $(go env GOMODCACHE) "
        + version.group(1)
    )
