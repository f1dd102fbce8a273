"""Bad input never causes a 500: hypothesis-generated bodies and names against every write route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from choreo_cp.api import create_app
from choreo_cp.context import ControlPlane
from choreo_cp.store import Store
from tests.controlplane.helpers import ADMIN_TOKEN, app_spec

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
APP_FIELDS = ["environment", "project", "type", "image", "replicas", "autoscaling", "env", "secrets", "endpoints",
              "schedule", "probes", "suspend", "command", "args", "resources"]  # fmt: skip
# bodies near the valid ones find more paths than pure noise
near_app = st.fixed_dictionaries(
    {},
    optional={f: json_value for f in APP_FIELDS}
    | {
        "image": st.text(max_size=30),
        "type": st.sampled_from(["service", "webhook", "worker", "scheduledTask", "manualTask", "x"]),
    },
).map(lambda d: {**app_spec(), **d})
bodies = st.one_of(
    json_value,
    near_app,
    st.builds(lambda s: {"spec": s}, near_app | json_value),
    st.just({"spec": app_spec()}),
    st.builds(lambda r: {"spec": app_spec(replicas=r)}, st.integers(-5, 2000)),
)
valid_names = st.sampled_from(["dev", "dp1", "a"])
names = st.one_of(
    valid_names,
    valid_names,
    valid_names,
    st.text(min_size=1, max_size=70),
    st.sampled_from(["x" * 64, "A", "-a", "a.b"]),
)


def test_no_500_on_generated_input(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    store = Store(tmp_path / "fuzz.db", synchronous="NORMAL")
    cp = ControlPlane(store=store, admin_token=ADMIN_TOKEN)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(cp)),
        base_url="http://cp.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )

    async def setup() -> None:
        await store.open()
        await client.put("/api/v1/dataplanes/dp1")
        # any image: the fuzzer is after the request handling, not the registry rules
        dev = {"spec": {"registry": {"allowedPrefixes": ["*"]}}}
        assert (await client.put("/api/v1/dataplanes/dp1/environments/dev", json=dev)).status_code == 202

    loop.run_until_complete(setup())
    seen: set[int] = set()

    async def send(method: str, path: str, body: Any) -> int:
        r = await client.request(method, path, json=body)
        return r.status_code

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @example(route="app", dp="dp1", env="dev", app="a", body={"spec": app_spec()})
    @example(route="env", dp="dp1", env="qa", app="a", body={"production": True})
    @given(
        route=st.sampled_from(["env", "app", "promotion", "register"]),
        dp=st.one_of(st.just("dp1"), st.just("dp1"), names),
        env=st.one_of(st.just("dev"), st.just("dev"), names),
        app=names,
        body=bodies,
    )
    def check(route: str, dp: str, env: str, app: str, body: Any) -> None:
        dp_, env_, app_ = (quote(x, safe="") for x in (dp, env, app))
        if route == "env":
            method, path = "PUT", f"/api/v1/dataplanes/{dp_}/environments/{env_}"
        elif route == "app":
            method, path = "PUT", f"/api/v1/dataplanes/{dp_}/environments/{env_}/apps/{app_}"
        elif route == "register":
            method, path = "PUT", f"/api/v1/dataplanes/{dp_}?rotateToken={quote(str(body)[:10])}"
        else:
            method, path = "POST", "/api/v1/promotions"
            if isinstance(body, dict):
                body = {"app": app, "from": {"dataplane": dp, "environment": env}, "to": body, **body}
        status = loop.run_until_complete(send(method, path, body))
        seen.add(status)
        assert status < 500, (method, path, body, status)

    try:
        check()
        # the harness sees accepted writes as well as refusals (it is not failing everything)
        assert {202, 422} <= seen, seen
        final = loop.run_until_complete(client.get("/api/v1/dataplanes/dp1"))
        assert final.status_code == 200
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(store.close())
        loop.close()
