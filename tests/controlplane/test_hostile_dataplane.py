"""A hostile data plane: a scripted agent speaking the real tunnel protocol sends what a compromised
agent would (oversized, deeply nested and mis-shaped statuses, huge or invalid inventories, absurd
orphan counts, reports and nacks for objects it does not have or that belong to another data plane,
digests of foreign repositories) and the control plane must stay correct and responsive and store
nothing invalid. Runs on loopback against a live server; nothing here talks to Kubernetes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from choreo_cp import reports
from choreo_cp.context import TunnelSettings
from choreo_cp.server import ControlPlaneServer
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, RawAgent, app_spec, eventually, put_app, put_env, register

APPS = "/api/v1/dataplanes/dp1/environments/dev/apps"


@dataclass
class Scene:
    server: ControlPlaneServer
    http: httpx.AsyncClient
    agent: RawAgent  # dp1's agent, connected and streaming
    tokens: dict[str, str]
    epoch: str


async def connect(server: ControlPlaneServer, http: httpx.AsyncClient, dp: str, token: str) -> RawAgent:
    view = (await http.get(f"/api/v1/dataplanes/{dp}")).json()
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello(dp, epoch=view["epoch"], revision=view["revision"])
    assert welcome.mode == "incremental"
    return agent


@pytest.fixture
async def scene(server: ControlPlaneServer, http: httpx.AsyncClient) -> AsyncIterator[Scene]:
    tokens = {dp: await register(http, dp) for dp in ("dp1", "dp2")}
    await put_env(http, "dp1", "dev")
    await put_app(http, "dp1", "dev", "a0")
    await put_app(http, "dp1", "dev", "a1")
    await put_env(http, "dp2", "prod")
    await put_app(http, "dp2", "prod", "shop")
    agent = await connect(server, http, "dp1", tokens["dp1"])
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    yield Scene(server, http, agent, tokens, epoch)
    await agent.close()


async def status_of(http: httpx.AsyncClient, path: str) -> Any:
    r = await http.get(path)
    assert r.status_code == 200, r.text[:300]
    return r.json()["status"]


async def marker_stored(scene: Scene, marker: str) -> None:
    """Report a fresh valid status for a1 and wait until it is visible: every report sent before it
    on the same connection has been handled (and flushed) by then."""
    item = {"key": "ChoreoApp/dev/a1", "status": {"phase": "Ready", "message": marker}, "observedAt": "t"}
    await scene.agent.send_json("status.batch", {"items": [item]})

    async def visible() -> bool:
        return bool((await status_of(scene.http, f"{APPS}/a1") or {}).get("message") == marker)

    await eventually(visible, what=f"marker {marker} stored")
    await scene.server.store.flush()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def condition(**extra: Any) -> dict[str, Any]:
    return {"type": "Ready", "status": "True", "reason": "Available", "message": "ok", **extra}


HOSTILE_STATUSES: list[tuple[str, str, Any]] = [
    ("nested 255 levels", "ChoreoApp/dev/a0", {"phase": "Ready", "extra": nested(255)}),
    ("nested inside a condition", "ChoreoApp/dev/a0", {"conditions": [condition(message=nested(20))]}),
    ("just too deep", "ChoreoApp/dev/a0", {"phase": "Ready", "extra": nested(reports.MAX_STATUS_DEPTH - 1)}),
    ("over the size bound", "ChoreoApp/dev/a0", {"conditions": [condition(type=f"T{i}", message="m" * 30_000) for i in range(3)]}),
    ("message too long", "ChoreoApp/dev/a0", {"phase": "Ready", "message": "x" * 40_000}),
    ("status is a list", "ChoreoApp/dev/a0", [{"phase": "Ready"}]),
    ("status is a string", "ChoreoApp/dev/a0", "Ready"),
    ("unknown phase", "ChoreoApp/dev/a0", {"phase": "Exploded"}),
    ("an environment phase on an app", "ChoreoApp/dev/a0", {"phase": "Terminating"}),
    ("an app phase on an environment", "Environment/dev", {"phase": "Progressing"}),
    ("replicas as a string", "ChoreoApp/dev/a0", {"replicas": "3"}),
    ("replicas as a boolean", "ChoreoApp/dev/a0", {"replicas": True}),
    ("negative replicas", "ChoreoApp/dev/a0", {"readyReplicas": -1}),
    ("absurd replicas", "ChoreoApp/dev/a0", {"replicas": 10**30}),
    ("ready as a number", "ChoreoApp/dev/a0", {"ready": 5}),
    ("image with whitespace", "ChoreoApp/dev/a0", {"image": "ghcr.io/acme/shop @sha256:00"}),
    ("conditions not a list", "ChoreoApp/dev/a0", {"conditions": {"Ready": "True"}}),
    ("too many conditions", "ChoreoApp/dev/a0", {"conditions": [condition(type=f"C{i}") for i in range(33)]}),
    ("condition without status", "ChoreoApp/dev/a0", {"conditions": [{"type": "Ready", "reason": "X"}]}),
    ("condition reason not a word", "ChoreoApp/dev/a0", {"conditions": [condition(reason="<script>")]}),
    ("endpoints not a list", "ChoreoApp/dev/a0", {"endpoints": "http://x"}),
    ("too many endpoints", "ChoreoApp/dev/a0", {"endpoints": [{"name": f"e{i}", "visibility": "Public", "url": "u"} for i in range(65)]}),
    ("endpoint visibility unknown", "ChoreoApp/dev/a0", {"endpoints": [{"name": "e", "visibility": "Everyone", "url": "u"}]}),
    ("a key that is not a key", "ChoreoApp/../a0", {"phase": "Ready"}),
    ("a foreign kind", "Namespace/kube-system", {"phase": "Ready"}),
    ("a key with a trailing newline", "ChoreoApp/dev/a0\n", {"phase": "Ready"}),
    ("text that is not Unicode", "ChoreoApp/dev/a0", {"phase": "Ready", "message": "\ud800"}),
    ("an unknown field that is not Unicode", "ChoreoApp/dev/a0", {"phase": "Ready", "x": {"\udfff": 1}}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "key", "status"), HOSTILE_STATUSES, ids=[c[0] for c in HOSTILE_STATUSES])
async def test_invalid_statuses_are_refused_and_never_stored(
    scene: Scene, case: str, key: str, status: Any
) -> None:
    good = {"phase": "Progressing", "message": "before"}
    await scene.agent.send(
        p.StatusBatch(items=[p.StatusItem(key="ChoreoApp/dev/a0", status=good, observed_at="t")])
    )
    await scene.agent.send(
        p.StatusBatch(items=[p.StatusItem(key="Environment/dev", status={"phase": "Ready"}, observed_at="t")])
    )
    await marker_stored(scene, "m1")
    frame_id = await scene.agent.send_json(
        "status.batch",
        {"items": [{"key": key, "status": status, "observedAt": "t"}, {"key": "ChoreoApp/dev/a1", "status": {"phase": "Ready", "message": "m2"}, "observedAt": "t"}]},
    )  # fmt: skip
    refusal = (await scene.agent.recv()).body
    assert isinstance(refusal, p.Error) and refusal.code == "bad_body" and refusal.ref == frame_id, refusal
    if refusal.message.startswith("status refused"):
        # refused by the control plane's status schema: the valid item of the batch was stored
        await marker_stored(scene, "m2")
    else:
        # not even a status batch (the protocol's envelope models refuse it whole)
        assert refusal.message.startswith("status.batch:"), refusal
        await marker_stored(scene, "m3")
    assert await status_of(scene.http, f"{APPS}/a0") == good, case
    assert await status_of(scene.http, "/api/v1/dataplanes/dp1/environments/dev") == {"phase": "Ready"}
    listed = await scene.http.get(APPS)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2
    metrics = (await scene.http.get("/metrics")).text
    counted = 'choreo_cp_tunnel_reports_refused_total{report="status"} 1.0' in metrics
    assert counted == refusal.message.startswith("status refused")


async def test_only_known_fields_are_kept_and_they_are_normalised(scene: Scene) -> None:
    status = {
        "phase": "Ready",
        "ready": "2/2",
        "replicas": 2,
        "readyReplicas": 2,
        "image": "ghcr.io/acme/a@sha256:" + "ab" * 32,
        "conditions": [condition(lastTransitionTime="2026-01-01T00:00:00Z", observedGeneration=3)],
        "endpoints": [{"name": "http", "visibility": "Project", "url": "http://a0.dev:8080/"}],
        "evil": {"script": "<script>"},  # unknown: dropped, not stored
        "message": None,  # null: dropped
    }
    await scene.agent.send_json(
        "status.batch", {"items": [{"key": "ChoreoApp/dev/a0", "status": status, "observedAt": "t"}]}
    )
    await marker_stored(scene, "m")
    stored = await status_of(scene.http, f"{APPS}/a0")
    assert stored == {k: v for k, v in status.items() if k not in ("evil", "message")}


async def test_reports_for_objects_a_data_plane_does_not_have_are_not_stored(scene: Scene) -> None:
    http, server = scene.http, scene.server
    await scene.agent.send(
        p.StatusBatch(
            items=[p.StatusItem(key="ChoreoApp/dev/a0", status={"phase": "Ready"}, observed_at="t")]
        )
    )
    await marker_stored(scene, "m1")
    # dp2, with its own valid token, reports on dp1's objects and on objects nobody has
    dp2 = await connect(server, http, "dp2", scene.tokens["dp2"])
    try:
        items = [
            p.StatusItem(
                key="ChoreoApp/dev/a0", status={"phase": "Failed", "message": "dp2 says"}, observed_at="t"
            ),
            p.StatusItem(key="Environment/dev", status={"phase": "Failed"}, observed_at="t"),
            p.StatusItem(key="ChoreoApp/prod/ghost", status={"phase": "Ready"}, observed_at="t"),
            p.StatusItem(
                key="ChoreoApp/prod/shop", status={"phase": "Ready", "message": "own"}, observed_at="t"
            ),
        ]
        await dp2.send(p.StatusBatch(items=items))
        await dp2.send(p.Nack(revision=1, key="ChoreoApp/dev/a0", code="evil", message="dp2 nacks dp1's app"))
        await dp2.send(p.Nack(revision=1, key="ChoreoApp/prod/ghost", code="evil", message="no such app"))
        await dp2.send(p.Nack(revision=1, key="not a key", code="evil"))
        await dp2.send_json(
            "nack", {"revision": 1, "key": "ChoreoApp/prod/shop", "code": "x", "message": "\ud800"}
        )
        for why in ("not a valid key", "unicode"):  # the second one the protocol's models refuse
            refusal = (await dp2.recv()).body
            assert isinstance(refusal, p.Error) and refusal.code == "bad_body", refusal
            assert refusal.message.startswith("nack") and why in refusal.message.lower(), refusal

        async def own_stored() -> bool:
            shop = await status_of(http, "/api/v1/dataplanes/dp2/environments/prod/apps/shop")
            return bool((shop or {}).get("message") == "own")

        await eventually(own_stored, what="dp2's report about its own app")
        hb = await dp2.send(p.Heartbeat())
        assert (await dp2.recv()).envelope.corr == hb  # the nacks were handled too
    finally:
        await dp2.close()
    await server.store.flush()
    assert await status_of(http, f"{APPS}/a0") == {"phase": "Ready"}
    a0 = (await http.get(f"{APPS}/a0")).json()
    assert a0["lastError"] is None
    for dp, key in [("dp2", "ChoreoApp/dev/a0"), ("dp2", "Environment/dev"), ("dp2", "ChoreoApp/prod/ghost")]:
        assert await server.store.get_status(dp, key) is None, (dp, key)
        assert await server.store.get_nack(dp, key) is None, (dp, key)
    # a late report for a deleted app does not bring its record back
    await http.delete(f"{APPS}/a0")
    await scene.agent.send(
        p.StatusBatch(
            items=[p.StatusItem(key="ChoreoApp/dev/a0", status={"phase": "Ready"}, observed_at="t")]
        )
    )
    await marker_stored(scene, "m2")
    assert await server.store.get_status("dp1", "ChoreoApp/dev/a0") is None


@pytest.mark.parametrize(
    ("count", "keys", "reason", "why"),
    [
        (10**12, [], None, "exceeds"),
        (reports.MAX_INVENTORY_ITEMS + 1, [], None, "exceeds"),
        (1, ["ChoreoApp/dev/x", "ChoreoApp/dev/y"], None, "keys listed"),
        (5, ["ChoreoApp/dev/x", "ChoreoApp/dev/x"], None, "repeat"),
        (1, ["Secret/kube-system/token"], None, "not a valid key"),
        (1, ["ChoreoApp/dev/x"], "held; DROP TABLE", "reason"),
        (1, ["ChoreoApp/dev/x\n"], None, "not a valid key"),
    ],
)
async def test_orphan_reports_stay_truthful(
    scene: Scene, count: int, keys: list[str], reason: str | None, why: str
) -> None:
    await scene.agent.send(
        p.Orphans(count=2, keys=["ChoreoApp/dev/old1", "ChoreoApp/dev/old2"], reason="epoch_changed")
    )

    async def two() -> bool:
        return bool((await scene.http.get("/api/v1/dataplanes/dp1")).json()["orphans"] == 2)

    await eventually(two, what="a truthful orphan report stored")
    frame_id = await scene.agent.send_json("orphans", {"count": count, "keys": keys, "reason": reason})
    refusal = (await scene.agent.recv()).body
    assert isinstance(refusal, p.Error) and refusal.ref == frame_id and why in refusal.message, refusal
    await marker_stored(scene, "m")
    view = (await scene.http.get("/api/v1/dataplanes/dp1")).json()
    assert view["orphans"] == 2 and view["orphanedKeys"] == ["ChoreoApp/dev/old1", "ChoreoApp/dev/old2"]


async def resync_start(server: ControlPlaneServer, token: str) -> tuple[RawAgent, p.SnapshotBegin]:
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1")
    begin = (await agent.recv()).body
    assert isinstance(begin, p.SnapshotBegin)
    return agent, begin


HASH = "a" * 64
BAD_INVENTORIES: list[tuple[str, dict[str, Any], str]] = [
    ("a key that is not a key", {"chunk": 0, "last": True, "items": {"ChoreoApp/dev/../x": HASH}}, "not a valid key"),
    ("a foreign kind", {"chunk": 0, "last": True, "items": {"Secret/default/x": HASH}}, "not a valid key"),
    ("a key with a trailing newline", {"chunk": 0, "last": True, "items": {"ChoreoApp/dev/a0\n": HASH}}, "not a valid key"),
    ("a hash that is not a hash", {"chunk": 0, "last": True, "items": {"ChoreoApp/dev/a0": "zz"}}, "hash"),
    ("a chunk too large", {"chunk": 0, "last": False, "items": {f"ChoreoApp/e/a{i}": HASH for i in range(reports.MAX_INVENTORY_CHUNK_ITEMS + 1)}}, "per frame"),
    ("a bucket out of range", {"chunk": 0, "last": True, "buckets": [10**6], "items": {}}, "bucket index"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "why"), BAD_INVENTORIES, ids=[c[0] for c in BAD_INVENTORIES])
async def test_invalid_inventories_end_the_resync_and_hold_nothing(
    scene: Scene, case: str, body: dict[str, Any], why: str
) -> None:
    await scene.agent.close()
    agent, _ = await resync_start(scene.server, scene.tokens["dp1"])
    frame_id = await agent.send_json("inventory", body)
    refusal = (await agent.recv()).body
    assert isinstance(refusal, p.Error) and refusal.ref == frame_id and why in refusal.message, refusal
    goaway = (await agent.recv()).body
    assert isinstance(goaway, p.GoAway) and "resync refused" in goaway.reason
    with pytest.raises(websockets.ConnectionClosed):
        await agent.recv()
    # a well-behaved agent resyncs as usual afterwards
    agent, _ = await resync_start(scene.server, scene.tokens["dp1"])
    await agent.send(p.Inventory(chunk=0, last=True, buckets=None, items={}))
    frames = await agent.recv_until("snapshot.end")
    assert sorted(f.body.key for f in frames if isinstance(f.body, p.DesiredPut)) == [
        "ChoreoApp/dev/a0",
        "ChoreoApp/dev/a1",
        "Environment/dev",
    ]
    await agent.close()


async def test_inventory_keys_the_control_plane_does_not_have_are_never_held(scene: Scene) -> None:
    await scene.agent.close()
    agent, begin = await resync_start(scene.server, scene.tokens["dp1"])
    for i in range(5):
        items = {f"ChoreoApp/junk{i}/a{j}": HASH for j in range(p.INVENTORY_CHUNK_ITEMS)}
        await agent.send(
            p.Inventory(chunk=i, last=False, buckets=None if i else list(range(begin.buckets)), items=items)
        )
    await agent.send(p.Inventory(chunk=5, last=False, items={"ChoreoApp/dev/a0": HASH}))
    hb = await agent.send(p.Heartbeat())
    assert (await agent.recv()).envelope.corr == hb  # every chunk before it was taken
    session = scene.server.cp.hub.get("dp1")
    assert session is not None and session.inventory_held == 1  # type: ignore[attr-defined]
    await agent.send(p.Inventory(chunk=6, last=True, items={}))
    frames = await agent.recv_until("snapshot.end")
    puts = sorted(f.body.key for f in frames if isinstance(f.body, p.DesiredPut))
    assert puts == ["ChoreoApp/dev/a0", "ChoreoApp/dev/a1", "Environment/dev"]  # a0's hash was wrong
    assert session.inventory_held == 0  # type: ignore[attr-defined]
    await agent.close()


DIGEST = "sha256:" + "5e" * 32


@pytest.mark.parametrize(
    ("desired", "reported", "promoted"),
    [
        ("ghcr.io/acme/shop:1", f"ghcr.io/acme/backdoor@{DIGEST}", None),
        ("ghcr.io/acme/shop:1", f"ghcr.io/acme/shop-evil@{DIGEST}", None),
        ("ghcr.io/acme/shop:1", f"ghcr.io/acme/shop/sub@{DIGEST}", None),
        ("ghcr.io/acme/shop:1", f"docker.io/acme/shop@{DIGEST}", None),
        ("ghcr.io/acme/shop:1", f"ghcr.io.evil.io/acme/shop@{DIGEST}", None),
        ("ghcr.io/acme/shop:1", "ghcr.io/acme/shop:1", None),  # no digest
        ("ghcr.io/acme/shop:1", f"ghcr.io/acme/../shop@{DIGEST}", None),  # not an image
        ("ghcr.io/acme/shop:1", f"ghcr.io/acme/shop:2@{DIGEST}", f"ghcr.io/acme/shop@{DIGEST}"),
        ("nginx:1.27", f"docker.io/library/nginx@{DIGEST}", f"docker.io/library/nginx@{DIGEST}"),
        ("docker.io/library/nginx:1.27", f"nginx@{DIGEST}", f"docker.io/library/nginx@{DIGEST}"),
    ],
)
async def test_promotion_takes_nothing_but_the_digest_from_the_data_plane(
    scene: Scene, desired: str, reported: str, promoted: str | None
) -> None:
    http = scene.http
    allow = {"registry": {"allowedPrefixes": ["ghcr.io/", "docker.io/", "ghcr.io.evil.io/"]}}
    await put_env(http, "dp1", "dev", allow)
    await put_env(http, "dp2", "prod", allow)
    await put_app(http, "dp1", "dev", "web", app_spec(image=desired))
    await scene.agent.send(p.StatusBatch(items=[p.StatusItem(key="ChoreoApp/dev/web", status={"phase": "Ready", "image": reported}, observed_at="t")]))  # fmt: skip
    await marker_stored(scene, "m")
    assert (await status_of(http, f"{APPS}/web"))["image"] == reported
    r = await http.post(
        "/api/v1/promotions",
        json={"app": "web", "from": {"dataplane": "dp1", "environment": "dev"}, "to": {"dataplane": "dp2", "environment": "prod"}},
    )  # fmt: skip
    target = await http.get("/api/v1/dataplanes/dp2/environments/prod/apps/web")
    if promoted is None:
        assert r.status_code == 409, r.text
        assert target.status_code == 404
    else:
        assert r.status_code == 202, r.text
        assert r.json()["image"] == promoted and target.json()["spec"]["image"] == promoted


async def test_rows_stored_before_validation_never_break_a_response(scene: Scene) -> None:
    """A database written by an older version (or by hand) may hold anything; reads re-validate."""
    server, http = scene.server, scene.http
    server.store.queue_status("dp1", "ChoreoApp/dev/a0", {"phase": "Ready", "x": nested(300)})
    server.store.queue_status(
        "dp1", "ChoreoApp/dev/a1", {"image": f"ghcr.io/acme/backdoor@{DIGEST}", "replicas": "x"}
    )
    server.store.queue_agent_info(
        "dp1", {"orphans": 10**40, "orphanedKeys": "not a list", "orphanReason": {"x": 1}}
    )
    await server.store.flush()
    for path in (APPS, f"{APPS}/a0", f"{APPS}/a1", "/api/v1/dataplanes", "/api/v1/dataplanes/dp1"):
        r = await http.get(path)
        assert r.status_code == 200, (path, r.text[:200])
    assert await status_of(http, f"{APPS}/a0") is None and await status_of(http, f"{APPS}/a1") is None
    view = (await http.get("/api/v1/dataplanes/dp1")).json()
    assert view["orphans"] is None and view["orphanedKeys"] == [] and view["agent"] == {}
    r = await http.post(
        "/api/v1/promotions",
        json={"app": "a1", "from": {"dataplane": "dp1", "environment": "dev"}, "to": {"dataplane": "dp2", "environment": "prod"}},
    )  # fmt: skip
    assert r.status_code == 409 and "no status" in r.json()["detail"]


async def test_a_report_flood_is_held_to_a_bound_and_the_control_plane_stays_responsive(
    tmp_path: Path,
) -> None:
    # No periodic flush: only the backpressure of the sessions keeps pending reports bounded.
    server = make_server(
        tmp_path / "cp.db",
        tunnel=TunnelSettings(heartbeat_interval=5.0, idle_timeout=30.0, status_flush_interval=3600),
    )
    await server.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
            tokens = {dp: await register(http, dp) for dp in ("dp1", "dp2")}
            await put_env(http, "dp1", "dev")
            await put_app(http, "dp1", "dev", "a0")
            await put_env(http, "dp2", "prod")
            hostile = await connect(server, http, "dp1", tokens["dp1"])
            honest = await connect(server, http, "dp2", tokens["dp2"])
            big = {"phase": "Ready", "message": "x" * 30_000}
            sent = 0

            async def flood(frames: int) -> None:
                nonlocal sent
                for i in range(frames):  # ~0.9 MB of valid statuses per frame, for objects dp1 does not have
                    items = [
                        p.StatusItem(key=f"ChoreoApp/ghost{i}/a{j}", status=big, observed_at="t")
                        for j in range(30)
                    ]
                    await hostile.send(p.StatusBatch(items=items))
                    sent += 30 * 30_000
                    await hostile.send_json("status.batch", {"items": [{"key": "ChoreoApp/dev/a0", "status": {"x": nested(200)}, "observedAt": "t"}]})  # fmt: skip
                    await hostile.send(
                        p.Nack(revision=1, key=f"ChoreoApp/ghost{i}/a", code="x", message="y" * 4000)
                    )

            async def handled() -> None:
                """Every frame sent so far has been taken (the refusals come back before the echo)."""
                hb = await hostile.send(p.Heartbeat())
                while (frame := await hostile.recv()).envelope.corr != hb:
                    assert isinstance(frame.body, p.Error)

            # nothing else flushes (no REST reads, no timer): only backpressure bounds what is held
            await flood(20)
            await handled()
            held = server.store.pending_status_bytes("dp1")
            assert sent > 4 * reports.MAX_PENDING_STATUS_BYTES
            assert held <= reports.MAX_PENDING_STATUS_BYTES + p.MAX_FRAME_BYTES, held

            # meanwhile the REST API answers and an honest data plane gets its changes
            latencies: list[float] = []
            task = asyncio.create_task(flood(40))
            for _ in range(20):
                start = time.monotonic()
                assert (await http.get(APPS)).status_code == 200
                latencies.append(time.monotonic() - start)
            await put_app(http, "dp2", "prod", "shop")
            put = (await honest.recv()).body
            assert isinstance(put, p.DesiredPut) and put.key == "ChoreoApp/prod/shop"
            await task
            await handled()
            assert max(latencies) < 5.0, latencies
            await server.store.flush()
            assert await server.store.get_status("dp1", "ChoreoApp/ghost0/a0") is None
            assert await server.store.get_nack("dp1", "ChoreoApp/ghost0/a") is None
            assert (await http.get(f"{APPS}/a0")).json()["status"] is None
            await hostile.close()
            await honest.close()
    finally:
        await server.stop()
