"""Which app events re-reconcile the apps connecting to them: the predicate's table and the index."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.connections import CallerIndex, target_names
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.predicates import connection_target_changed
from choreo_dp.render import ClusterCapabilities
from tests.operator.fake_kube import FakeKube


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "environment": "dev",
        "project": "shop",
        "type": "service",
        "image": "r/x:1",
        "replicas": 1,
        "endpoints": [{"name": "http", "port": 8080, "protocol": "REST", "visibility": "Organization"}],
    }
    base.update(spec)
    return {
        "metadata": {"name": "orders", "namespace": "choreo-dev", "generation": 1, "annotations": {}},
        "spec": base,
        "status": {"phase": "Ready"},
    }


def changed(path: str, value: Any, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``source`` (default: the base body) with the dotted ``path`` set; digits index lists."""
    out = copy.deepcopy(source or body())
    node: Any = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(leaf) if isinstance(node, list) else leaf] = value
    return out


BASE = body()
# (case, old, new, callers re-reconciled?)
CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None, bool]] = [
    ("target appears", None, BASE, True),
    ("target deleted", BASE, None, True),
    ("target being deleted", BASE, changed("metadata.deletionTimestamp", "2026-01-01T00:00:00Z"), True),
    ("nothing changed", BASE, copy.deepcopy(BASE), False),
    ("status only", BASE, changed("status.phase", "Degraded"), False),
    ("image changed", BASE, changed("spec.image", "r/x:2"), False),
    ("replicas changed", BASE, changed("spec.replicas", 3), False),
    ("an annotation", BASE, changed("metadata.annotations", {"a": "b"}), False),
    ("generation only", BASE, changed("metadata.generation", 2), False),
    ("project changed", BASE, changed("spec.project", "billing"), True),
    ("environment changed", BASE, changed("spec.environment", "prod"), True),
    ("port changed", BASE, changed("spec.endpoints.0.port", 9090), True),
    ("visibility changed", BASE, changed("spec.endpoints.0.visibility", "Project"), True),
    ("base path changed", BASE, changed("spec.endpoints.0.basePath", "/v2"), True),
    ("endpoint removed", BASE, changed("spec.endpoints", []), True),
    ("still absent", None, None, False),
]


@pytest.mark.parametrize(("case", "old", "new", "expected"), CASES, ids=[x[0] for x in CASES])
def test_connection_target_changed(
    case: str, old: dict[str, Any] | None, new: dict[str, Any] | None, expected: bool
) -> None:
    assert connection_target_changed(old, new) is expected


def caller(name: str, *targets: str, ns: str = "choreo-dev") -> tuple[AppKey, dict[str, Any]]:
    conns = [{"name": f"c{i}", "app": t, "endpoint": "http"} for i, t in enumerate(targets)]
    return AppKey(ns, name), {"metadata": {"name": name, "namespace": ns}, "spec": {"connections": conns}}


def test_index_maps_targets_to_callers() -> None:
    index = CallerIndex()
    web_key, web = caller("web", "orders", "catalog")
    cli_key, cli = caller("cli", "orders")
    other_key, other = caller("web", "orders", ns="choreo-prod")
    for key, b in ((web_key, web), (cli_key, cli), (other_key, other)):
        index.update(key, b)
    orders = AppKey("choreo-dev", "orders")
    assert index.callers_of(orders) == [cli_key, web_key]
    assert index.callers_of(AppKey("choreo-dev", "catalog")) == [web_key]
    # Namespaces never mix: the prod caller names "orders" of prod.
    assert index.callers_of(AppKey("choreo-prod", "orders")) == [other_key]
    # A caller that drops a connection, then goes away, leaves nothing behind.
    _, web_fewer = caller("web", "catalog")
    index.update(web_key, web_fewer)
    assert index.callers_of(orders) == [cli_key]
    index.update(web_key, None)
    index.update(cli_key, None)
    assert index.callers_of(orders) == []
    assert index.callers_of(AppKey("choreo-dev", "catalog")) == []
    assert index._targets == {other_key: frozenset({AppKey("choreo-prod", "orders")})}


def test_target_names_are_read_leniently() -> None:
    # An invalid spec still names its targets, so the caller hears of them and reports its own error.
    assert target_names({"spec": {"connections": [{"app": "a"}, {"name": "x"}, "junk", {"app": 3}]}}) == {"a"}
    assert target_names(None) == frozenset()
    assert target_names({"spec": {"connections": None}}) == frozenset()


async def _drain(ctl: Controller) -> set[AppKey]:
    """The app keys the events so far queued (environment keys, queued on timers, left aside)."""
    out: set[AppKey] = set()
    while len(ctl.queue):
        key = await ctl.queue.get()
        ctl.queue.done(key)
        if isinstance(key, AppKey):
            out.add(key)
    return out


async def test_controller_enqueues_callers_from_target_events_only() -> None:
    ctl = Controller(
        FakeKube(), OperatorConfig(secrets_factory=None), ClusterCapabilities(gateway_api=False), None
    )
    web_key, web = caller("web", "orders")
    lone_key, lone = caller("lone")
    orders_key, orders = AppKey("choreo-dev", "orders"), body()
    ctl.on_app_event("ADDED", web)
    ctl.on_app_event("ADDED", lone)
    assert await _drain(ctl) == {web_key, lone_key}
    ctl.on_app_event("ADDED", orders)
    assert await _drain(ctl) == {orders_key, web_key}

    new_image = changed("spec.image", "r/x:2", orders)
    new_image["metadata"]["generation"] = 2
    ctl.on_app_event("MODIFIED", new_image)
    assert await _drain(ctl) == {orders_key}, "an image change is nothing a caller reads"

    new_port = changed("spec.endpoints.0.port", 9090, new_image)
    new_port["metadata"]["generation"] = 3
    ctl.on_app_event("MODIFIED", new_port)
    assert await _drain(ctl) == {orders_key, web_key}

    ctl.on_app_event("DELETED", new_port)
    assert await _drain(ctl) == {orders_key, web_key}

    # The caller gone, the target's return reaches no one.
    ctl.on_app_event("DELETED", web)
    await _drain(ctl)
    ctl.on_app_event("ADDED", orders)
    assert await _drain(ctl) == {orders_key}
