"""Connections end to end through real kopf, on the emulated API and on a real cluster.

Resolved: variables injected, egress label on the pods, one ingress NetworkPolicy per connection
(checked object by object). Refused by visibility: Ready False / ConnectionUnresolved with a Warning
Event while the workload still runs. A target deleted and re-created: the caller follows, from the
watch alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import resources as R
from choreo_dp.render.labels import APP_LABEL, PROJECT_LABEL
from tests.operator.harness import Cluster, choreoapp, environment, eventually, running_operator

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

CALLS_ORDERS = "calls.choreo.dev/orders.api"
CALLS_INVOICES = "calls.choreo.dev/invoices.http"


class Env:
    def __init__(self, cluster: Cluster) -> None:
        self.kube = cluster.kube
        self.dev = cluster.env_name("conn")
        self.ns = f"choreo-{self.dev}"

    async def apply(self, name: str, **spec: Any) -> None:
        # spec.env would meet choreoapp()'s own ``env`` parameter: set after.
        variables = spec.pop("env", None)
        body = choreoapp(name, self.dev, **spec)
        if variables is not None:
            body["spec"]["env"] = variables
        await self.kube.apply(body, "test")

    async def app(self, name: str) -> dict[str, Any]:
        app = await self.kube.get(R.CHOREOAPPS, name, self.ns)
        assert app is not None, f"app {name} missing"
        return app

    async def status_where(self, name: str, what: str, check: Any, timeout: float = 20.0) -> dict[str, Any]:
        """The app once its status, for its current generation, satisfies ``check``."""

        async def probe() -> dict[str, Any] | None:
            app = await self.app(name)
            status = app.get("status") or {}
            current = status.get("observedGeneration") == app["metadata"].get("generation")
            return app if current and check(status) else None

        try:
            return await eventually(probe, timeout=timeout, what=f"{name}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {(await self.app(name)).get('status')}") from None

    async def container_env(self, name: str) -> dict[str, str]:
        dep = await self.kube.get(R.DEPLOYMENTS, name, self.ns)
        assert dep is not None
        container = dep["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container.get("env") or []}

    async def pod_labels(self, name: str) -> dict[str, str]:
        dep = await self.kube.get(R.DEPLOYMENTS, name, self.ns)
        assert dep is not None
        labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
        return labels

    async def policies_of(self, caller: str) -> dict[str, dict[str, Any]]:
        items, _ = await self.kube.list(R.NETWORKPOLICIES, self.ns, label_selector=f"{APP_LABEL}={caller}")
        return {p["metadata"]["name"]: p for p in items}


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == "Ready")


def resolved_all(status: dict[str, Any]) -> bool:
    conns = status.get("connections") or []
    return bool(conns) and all(c["resolved"] for c in conns) and status.get("phase") == "Ready"


def expected_policy(
    caller: str, target: str, target_project: str, caller_project: str, label: str, port: int
) -> dict[str, Any]:
    return {
        "podSelector": {"matchLabels": {APP_LABEL: target, PROJECT_LABEL: target_project}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchLabels": {APP_LABEL: caller, PROJECT_LABEL: caller_project, label: "true"}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        ],
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(operator_cluster: Cluster) -> AsyncIterator[Env]:
    e = Env(operator_cluster)
    async with running_operator(operator_cluster):
        await e.kube.apply(environment(e.dev, quota={"cpu": "16", "memory": "16Gi", "pods": 40}), "test")
        await eventually(lambda: e.kube.get(R.NAMESPACES, e.ns), what=f"namespace {e.ns}")
        # Two targets: a Project endpoint of project shop, an Organization endpoint of project billing.
        await e.apply(
            "orders",
            endpoints=[{"name": "api", "port": 8080, "visibility": "Project", "basePath": "/orders"}],
        )
        await e.apply(
            "invoices",
            project="billing",
            endpoints=[{"name": "http", "port": 8081, "visibility": "Organization", "protocol": "GraphQL"}],
        )
        yield e


async def test_resolved_connections_inject_variables_and_open_exactly_that_traffic(env: Env) -> None:
    await env.apply(
        "web",
        env=[{"name": "LOG_LEVEL", "value": "info"}],
        connections=[
            {"name": "orders", "app": "orders", "endpoint": "api"},
            {"name": "invoices", "app": "invoices", "endpoint": "http", "project": "billing"},
        ],
    )
    app = await env.status_where("web", "both connections resolved", resolved_all)
    assert app["status"]["connections"] == [
        {
            "name": "orders",
            "target": "shop/orders/api",
            "resolved": True,
            "reason": "Resolved",
            "message": f"connection orders: calls http://orders.{env.ns}.svc.cluster.local:8080/orders",
            "url": f"http://orders.{env.ns}.svc.cluster.local:8080/orders",
        },
        {
            "name": "invoices",
            "target": "billing/invoices/http",
            "resolved": True,
            "reason": "Resolved",
            "message": f"connection invoices: calls http://invoices.{env.ns}.svc.cluster.local:8081/",
            "url": f"http://invoices.{env.ns}.svc.cluster.local:8081/",
        },
    ]
    assert ready_condition(app["status"])["status"] == "True"
    assert await env.container_env("web") == {
        "LOG_LEVEL": "info",
        "ORDERS_URL": f"http://orders.{env.ns}.svc.cluster.local:8080/orders",
        "ORDERS_HOST": f"orders.{env.ns}.svc.cluster.local",
        "ORDERS_PORT": "8080",
        "ORDERS_BASE_PATH": "/orders",
        "INVOICES_URL": f"http://invoices.{env.ns}.svc.cluster.local:8081/",
        "INVOICES_HOST": f"invoices.{env.ns}.svc.cluster.local",
        "INVOICES_PORT": "8081",
        "INVOICES_BASE_PATH": "/",
    }
    labels = await env.pod_labels("web")
    assert labels[CALLS_ORDERS] == "true" and labels[CALLS_INVOICES] == "true"

    policies = await env.policies_of("web")
    assert set(policies) == {"choreo-conn-web.orders", "choreo-conn-web.invoices"}
    orders = policies["choreo-conn-web.orders"]
    assert orders["spec"] == expected_policy("web", "orders", "shop", "shop", CALLS_ORDERS, 8080)
    invoices = policies["choreo-conn-web.invoices"]
    assert invoices["spec"] == expected_policy("web", "invoices", "billing", "shop", CALLS_INVOICES, 8081)
    for policy in policies.values():
        (owner,) = policy["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("ChoreoApp", "web", app["metadata"]["uid"])
    # The caller's own pods carry every label its policies admit.
    for policy in policies.values():
        admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert {k: labels.get(k) for k in admitted} == admitted

    # A connection dropped takes its opening and its variables with it.
    await env.apply(
        "web",
        env=[{"name": "LOG_LEVEL", "value": "info"}],
        connections=[{"name": "orders", "app": "orders", "endpoint": "api"}],
    )
    await env.status_where(
        "web", "one connection", lambda s: len(s.get("connections") or []) == 1 and resolved_all(s)
    )

    async def only_orders_policy() -> bool:
        return set(await env.policies_of("web")) == {"choreo-conn-web.orders"}

    await eventually(only_orders_policy, what="the invoices policy pruned")
    assert "INVOICES_URL" not in await env.container_env("web")
    assert CALLS_INVOICES not in await env.pod_labels("web")


async def test_project_endpoint_across_projects_is_refused_but_the_workload_runs(env: Env) -> None:
    await env.apply(
        "spy",
        project="billing",
        connections=[{"name": "orders", "app": "orders", "endpoint": "api", "project": "shop"}],
    )

    def refused(status: dict[str, Any]) -> bool:
        conns = status.get("connections") or []
        return bool(conns) and conns[0]["reason"] == "VisibilityForbids" and status.get("phase") == "Degraded"

    app = await env.status_where("spy", "connection refused by visibility", refused)
    (conn,) = app["status"]["connections"]
    assert conn["resolved"] is False and conn["target"] == "shop/orders/api"
    assert "visibility Project" in conn["message"] and "url" not in conn
    ready = ready_condition(app["status"])
    assert (ready["status"], ready["reason"]) == ("False", "ConnectionUnresolved")
    assert "connection orders" in ready["message"]

    async def warned() -> dict[str, Any] | None:
        events, _ = await env.kube.list(R.EVENTS, env.ns)
        return next(
            (
                e
                for e in events
                if e.get("reason") == "ConnectionUnresolved" and e["involvedObject"]["name"] == "spy"
            ),
            None,
        )

    event = await eventually(warned, what="a ConnectionUnresolved Event on spy")
    assert event["type"] == "Warning"
    assert "connection orders" in event["message"] and "visibility Project" in event["message"]
    # Runs, without that connection's variables, label or opening.
    dep = await env.kube.get(R.DEPLOYMENTS, "spy", env.ns)
    assert dep is not None and dep["spec"]["replicas"] == 1
    assert not any(k.startswith("ORDERS_") for k in await env.container_env("spy"))
    assert CALLS_ORDERS not in await env.pod_labels("spy")
    assert await env.policies_of("spy") == {}


async def test_target_deleted_and_recreated(env: Env) -> None:
    ledger = {"endpoints": [{"name": "api", "port": 7000, "visibility": "Project"}]}
    await env.apply("ledger", **ledger)
    await env.apply("client", connections=[{"name": "ledger", "app": "ledger", "endpoint": "api"}])
    await env.status_where("client", "resolved", resolved_all)
    assert set(await env.policies_of("client")) == {"choreo-conn-client.ledger"}

    await env.kube.delete(R.CHOREOAPPS, "ledger", env.ns)

    def app_not_found(status: dict[str, Any]) -> bool:
        conns = status.get("connections") or []
        return bool(conns) and conns[0]["reason"] == "AppNotFound"

    app = await env.status_where("client", "unresolved after the target's deletion", app_not_found)
    assert ready_condition(app["status"])["reason"] == "ConnectionUnresolved"

    async def closed() -> bool:
        return await env.policies_of("client") == {} and "LEDGER_URL" not in await env.container_env("client")

    await eventually(closed, what="client's ledger policy and variables gone")

    await env.apply("ledger", **ledger)
    await env.status_where("client", "resolved again", resolved_all)
    assert (await env.container_env("client"))["LEDGER_PORT"] == "7000"
    policies = await env.policies_of("client")
    assert policies["choreo-conn-client.ledger"]["spec"] == expected_policy(
        "client", "ledger", "shop", "shop", "calls.choreo.dev/ledger.api", 7000
    )
