"""Connections: resolution against the environment's apps, env vars, egress label, NetworkPolicies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from choreo_dp.api import ChoreoApp
from choreo_dp.render import render_app
from choreo_dp.render.connections import calls_label, resolve_connections
from choreo_dp.render.labels import APP_LABEL, PROJECT_LABEL
from tests.render.cases import GATEWAY_API, app, endpoint, environment

GOLDEN = Path(__file__).parent / "golden" / "connections"
UPDATE = os.environ.get("CHOREO_DP_UPDATE_GOLDEN") == "1"
ENV = environment()


def target(name: str, project: str, *endpoints: dict[str, Any], env: str = "dev") -> ChoreoApp:
    return app(name, project=project, environment=env, endpoints=list(endpoints))


TARGETS = {
    "orders": target("orders", "shop", endpoint("api", "Project", base_path="/orders")),
    "catalog": target("catalog", "shop", endpoint("grpc", "Organization", protocol="gRPC", port=9090)),
    "invoices": target(
        "invoices",
        "billing",
        endpoint("http", "Organization", base_path="/v1"),
        endpoint("admin", "Project", port=9000),
        endpoint("feed", "Public", protocol="WS", port=8081, base_path="/feed"),
        endpoint("raw", "Organization", protocol="TCP", port=5432),
    ),
    "elsewhere": target("elsewhere", "shop", endpoint("api", "Organization"), env="prod"),
}


def caller(*connections: dict[str, Any], project: str = "shop", **spec: Any) -> ChoreoApp:
    return app("web", project=project, connections=list(connections), **spec)


def c(name: str, to: str, ep: str, project: str | None = None) -> dict[str, Any]:
    out = {"name": name, "app": to, "endpoint": ep}
    if project is not None:
        out["project"] = project
    return out


# (case, connection, caller project, expected reason, expected URL when resolved)
RESOLVE_CASES: list[tuple[str, dict[str, Any], str, str, str | None]] = [
    (
        "same project, Project endpoint",
        c("orders", "orders", "api"),
        "shop",
        "Resolved",
        "http://orders.choreo-dev.svc.cluster.local:8080/orders",
    ),
    (
        "same project, Organization gRPC (no path)",
        c("catalog", "catalog", "grpc"),
        "shop",
        "Resolved",
        "grpc://catalog.choreo-dev.svc.cluster.local:9090",
    ),
    (
        "other project, Organization endpoint",
        c("inv", "invoices", "http", "billing"),
        "shop",
        "Resolved",
        "http://invoices.choreo-dev.svc.cluster.local:8080/v1",
    ),
    (
        "other project, Public WS endpoint",
        c("feed", "invoices", "feed", "billing"),
        "shop",
        "Resolved",
        "ws://invoices.choreo-dev.svc.cluster.local:8081/feed",
    ),
    (
        "other project, Organization TCP",
        c("db", "invoices", "raw", "billing"),
        "shop",
        "Resolved",
        "tcp://invoices.choreo-dev.svc.cluster.local:5432",
    ),
    (
        "other project, Project endpoint",
        c("adm", "invoices", "admin", "billing"),
        "shop",
        "VisibilityForbids",
        None,
    ),
    ("same project as target, Project endpoint", c("adm", "invoices", "admin"), "billing", "Resolved", None),
    ("project left out for another project", c("inv", "invoices", "http"), "shop", "ProjectMismatch", None),
    ("project named wrongly", c("orders", "orders", "api", "billing"), "shop", "ProjectMismatch", None),
    ("no such app", c("gone", "nothing", "api"), "shop", "AppNotFound", None),
    ("no such endpoint", c("orders", "orders", "grpc"), "shop", "EndpointNotFound", None),
    ("app of another environment", c("else", "elsewhere", "api"), "shop", "AppNotFound", None),
]


@pytest.mark.parametrize(
    ("case", "connection", "project", "reason", "url"), RESOLVE_CASES, ids=[x[0] for x in RESOLVE_CASES]
)
def test_resolve(case: str, connection: dict[str, Any], project: str, reason: str, url: str | None) -> None:
    (res,) = resolve_connections(caller(connection, project=project), TARGETS)
    assert res.reason == reason, res.message
    assert res.resolved == (reason == "Resolved")
    assert res.message.startswith(f"connection {connection['name']}: ")
    if url is not None:
        assert res.target is not None and res.target.url == url
        assert res.status()["url"] == url
    if not res.resolved:
        assert "url" not in res.status()


def test_unresolved_messages_say_why() -> None:
    forbidden = c("adm", "invoices", "admin", "billing")
    (res,) = resolve_connections(caller(forbidden), TARGETS)
    assert res.message == (
        "connection adm: endpoint invoices/admin has visibility Project: only apps of project billing "
        "may call it, and this app is in project shop"
    )
    assert res.status() == {
        "name": "adm",
        "target": "billing/invoices/admin",
        "resolved": False,
        "reason": "VisibilityForbids",
        "message": res.message,
    }


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("case", [x for x in RESOLVE_CASES], ids=[x[0] for x in RESOLVE_CASES])
def test_policy_exactly_when_resolved_and_never_wider_than_visibility(case: Any) -> None:
    _, connection, project, reason, _ = case
    web = caller(connection, project=project)
    resolutions = resolve_connections(web, TARGETS)
    rendered = render_app(web, ENV, GATEWAY_API, connections=tuple(resolutions))
    policies = [m for m in rendered.manifests if m["kind"] == "NetworkPolicy"]
    pod_labels = rendered.workload["spec"]["template"]["metadata"]["labels"]
    env_vars = {
        e["name"] for e in rendered.workload["spec"]["template"]["spec"]["containers"][0].get("env", [])
    }
    prefix = connection["name"].upper().replace("-", "_")
    if reason != "Resolved":
        assert policies == []
        assert not any(k.startswith("calls.") for k in pod_labels)
        assert not any(v.startswith(prefix + "_") for v in env_vars)
        return
    (policy,) = policies
    tgt = TARGETS[connection["app"]]
    ep = next(e for e in tgt.spec.endpoints if e.name == connection["endpoint"])
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"] == {
        "matchLabels": {APP_LABEL: tgt.metadata.name, PROJECT_LABEL: tgt.spec.project}
    }
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": ep.port}]
    (peer,) = rule["from"]
    # A pod selector alone: same namespace only, never a namespaceSelector or ipBlock.
    assert set(peer) == {"podSelector"}
    selector = peer["podSelector"]["matchLabels"]
    assert _matches(selector, pod_labels), "the caller's own pods must carry what the policy admits"
    assert selector[APP_LABEL] == "web"
    # The rule: a Project endpoint admits its own project only.
    assert ep.visibility != "Project" or tgt.spec.project == web.spec.project
    assert policy["metadata"]["ownerReferences"][0]["name"] == "web"
    assert policy["metadata"]["labels"][APP_LABEL] == "web"
    assert {f"{prefix}_URL", f"{prefix}_HOST", f"{prefix}_PORT", f"{prefix}_BASE_PATH"} <= env_vars


def test_unresolved_connections_render_as_if_absent() -> None:
    unresolved = caller(c("gone", "nothing", "api"), c("adm", "invoices", "admin", "billing"), **_service())
    plain = app("web", project="shop", **_service())
    resolutions = tuple(resolve_connections(unresolved, TARGETS))
    assert not any(r.resolved for r in resolutions)
    assert (
        render_app(unresolved, ENV, GATEWAY_API, connections=resolutions).manifests
        == render_app(plain, ENV, GATEWAY_API).manifests
    )


def test_calls_label_fits_a_label_key() -> None:
    long = target("a" * 63, "shop", endpoint("b" * 63, "Organization"))
    web = caller(c("x", "a" * 63, "b" * 63))
    (res,) = resolve_connections(web, {"a" * 63: long})
    assert res.target is not None
    prefix, name = calls_label(res.target).split("/")
    assert prefix == "calls.choreo.dev" and len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()


def _service() -> dict[str, Any]:
    return {"env": [{"name": "LOG_LEVEL", "value": "info"}], "endpoints": [endpoint("http", "Project")]}


GOLDEN_CASES: dict[str, ChoreoApp] = {
    "resolved": caller(
        c("orders", "orders", "api"),
        c("invoices", "invoices", "http", "billing"),
        c("catalog", "catalog", "grpc"),
        **_service(),
    ),
    "unresolved": caller(
        c("orders", "orders", "api"),
        c("invoices-admin", "invoices", "admin", "billing"),
        c("gone", "nothing", "api"),
        **_service(),
    ),
    "task-resolved": caller(c("orders", "orders", "api"), type="manualTask"),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden(case: str) -> None:
    web = GOLDEN_CASES[case]
    resolutions = resolve_connections(web, TARGETS)
    rendered = render_app(web, ENV, GATEWAY_API, connections=tuple(resolutions))
    docs = [*rendered.manifests, {"connections": [r.status() for r in resolutions]}]
    path = GOLDEN / f"{case}.yaml"
    text = yaml.safe_dump_all(docs, sort_keys=False, width=120)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with CHOREO_DP_UPDATE_GOLDEN=1"
    assert docs == list(yaml.safe_load_all(path.read_text()))


def test_every_connections_golden_file_has_a_case() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(GOLDEN_CASES)
