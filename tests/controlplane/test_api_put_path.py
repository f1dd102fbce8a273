"""The REST write path kept cheap without losing a check (issue 19, REST PUT throughput).

A PUT's spec is validated once with its body (strictly) and stored with the path's environment set,
not validated a third time; every route dependency is a coroutine, so no request hops to a worker
thread to read an attribute.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

from choreo_cp.api import apps, dataplanes, environments, history, observe, ops, promotions
from choreo_cp.api.deps import require_admin
from choreo_dp.api import ChoreoAppSpec
from tests.controlplane.helpers import put_env, register

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_app_specs() -> list[dict[str, Any]]:
    specs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ChoreoApp":
                specs.append(doc["spec"])
    return specs


def _sync_calls(dependant: Dependant) -> list[str]:
    found = []
    for dep in dependant.dependencies:
        call = dep.call
        # an instance (HTTPBearer) is awaited through its class's __call__
        target = call if inspect.isroutine(call) else type(call).__call__
        if not inspect.iscoroutinefunction(target):
            found.append(getattr(call, "__qualname__", repr(call)))
        found += _sync_calls(dep)
    return found


def test_no_route_dependency_runs_on_a_worker_thread() -> None:
    # FastAPI runs a plain ``def`` dependency in the thread pool: a thread hop on every request.
    # (a plain ``def`` endpoint too).
    routes = [
        r
        for module in (dataplanes, environments, apps, history, promotions, observe, ops)
        for r in module.router.routes
        if isinstance(r, APIRoute)
    ]
    assert len(routes) > 10
    dependants = [get_dependant(path="", call=require_admin), *(r.dependant for r in routes)]
    offenders = {name for d in dependants for name in _sync_calls(d)}
    offenders |= {r.name for r in routes if not inspect.iscoroutinefunction(r.endpoint)}
    assert sorted(offenders) == []


@pytest.mark.parametrize("with_environment", [True, False], ids=["spec-names-env", "env-from-path"])
async def test_a_put_stores_exactly_what_full_validation_gives(
    http: httpx.AsyncClient, with_environment: bool
) -> None:
    specs = _example_app_specs()
    assert len(specs) >= 5
    await register(http)
    await put_env(http, "dp1", "demo", {"registry": {"allowedPrefixes": ["*"]}})
    for spec in specs:
        sent = {k: v for k, v in spec.items() if with_environment or k != "environment"}
        name = f"{spec['project']}-{spec['type']}".lower()[:63]
        r = await http.put(f"/api/v1/dataplanes/dp1/environments/demo/apps/{name}", json={"spec": sent})
        assert r.status_code == 202, r.text
        stored = (await http.get(f"/api/v1/dataplanes/dp1/environments/demo/apps/{name}")).json()["spec"]
        assert stored == ChoreoAppSpec.model_validate({**sent, "environment": "demo"}).to_k8s()
