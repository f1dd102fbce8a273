"""Issue 12, control plane side: one test per finding (each failed before the fix).

Finding 3 (an object too large for the tunnel was accepted), finding 4 (promotion trusted the
repository a data plane reported), and from finding 8: a deeply nested status made the app list
answer 500, an agent could make the control plane hold a million inventory items, unparseable
bodies got 400 (or 500) instead of 422, the body was read before authentication, and the registry
allowlist was not checked when an app was pushed. All of it runs on loopback against a live
server; none of it talks to Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from choreo_cp.server import ControlPlaneServer
from choreo_dp.api import ChoreoAppSpec
from choreo_wire import protocol as p
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    FRAME_TIMEOUT,
    RawAgent,
    app_spec,
    eventually,
    put_app,
    put_env,
    register,
)

APP_URL = "/api/v1/dataplanes/dp1/environments/dev/apps"
MAX_BODY_BYTES = 1024 * 1024


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def app_body_of_size(target: int) -> tuple[bytes, dict[str, Any]]:
    """A valid ``{"spec": ...}`` app body of exactly ``target`` bytes (padded with env values)."""
    count = target // 30_000 + 1
    env = [{"name": f"PAD_{i}", "value": ""} for i in range(count)]
    doc = {"spec": app_spec(env=env)}
    room = target - len(_dumps(doc))
    assert 0 <= room <= count * 32768, room
    for item in env:
        take = min(room, 30_000)
        item["value"] = "x" * take
        room -= take
    body = _dumps(doc)
    assert len(body) == target
    return body, doc["spec"]


def sent_frame_bytes(name: str, spec: dict[str, Any]) -> int:
    """What the desired.put for this app weighs on the wire, built independently of the code under
    test (normalised spec, real envelope); raises FrameTooLarge like the sender would."""
    stored = ChoreoAppSpec.model_validate({**spec, "environment": "dev"}).to_k8s()
    put = p.DesiredPut(
        key=p.app_key("dev", name),
        kind="ChoreoApp",
        revision=1,
        prev=0,
        spec_hash=p.spec_hash(stored),
        spec=stored,
        metadata={"environment": "dev", "name": name},
    )
    return len(p.encode(put, seq=1).encode())


async def revision(http: httpx.AsyncClient, dp: str = "dp1") -> int:
    return int((await http.get(f"/api/v1/dataplanes/{dp}")).json()["revision"])


# -- finding 3 ---------------------------------------------------------------------------------
async def test_finding3_an_object_the_tunnel_cannot_carry_is_refused_with_the_limit(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    before = await revision(http)
    # Under the REST body limit, but its desired.put frame is over the tunnel's: this is what
    # blocked every later change of the data plane.
    body, spec = app_body_of_size(MAX_BODY_BYTES - 1)
    with pytest.raises(p.FrameTooLarge):
        sent_frame_bytes("big", spec)
    r = await http.put(f"{APP_URL}/big", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    message = r.json()["detail"][0]["msg"]
    assert str(p.MAX_FRAME_BYTES) in message and "limit" in message, message
    assert len(r.content) < 4096  # the refusal does not echo the megabyte back
    # A frame that would fit but leaves the envelope no margin is refused too.
    body, spec = app_body_of_size(p.MAX_FRAME_BYTES - 2048)
    assert p.MAX_FRAME_BYTES - 8192 < sent_frame_bytes("edge", spec) <= p.MAX_FRAME_BYTES
    r = await http.put(f"{APP_URL}/edge", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert await revision(http) == before
    # What is accepted is carried: a large app below the limit reaches a fresh agent in one frame.
    body, spec = app_body_of_size(p.MAX_FRAME_BYTES - 16 * 1024)
    r = await http.put(f"{APP_URL}/large", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text[:300]
    agent = await RawAgent.connect(server.tunnel_url, token)
    assert (await agent.hello("dp1")).mode == "resync"
    assert (await agent.recv()).type == "snapshot.begin"
    await agent.send(p.Inventory(chunk=0, last=True, buckets=None, items={}))
    frames = await agent.recv_until("snapshot.end")
    puts = {f.body.key: f.body for f in frames if isinstance(f.body, p.DesiredPut)}
    assert puts["ChoreoApp/dev/large"].spec["env"][0]["value"] == spec["env"][0]["value"]
    await agent.close()


def test_the_size_the_api_checks_is_the_size_the_sender_sends() -> None:
    """put_frame_bytes measures the desired.put the session sends, with the longest numbers."""
    from choreo_cp.tunnel import put_frame_bytes

    worst = 2**63 - 1
    for target in (2_000, p.MAX_FRAME_BYTES - 20_000, MAX_BODY_BYTES - 1):
        _, raw = app_body_of_size(target)
        spec = ChoreoAppSpec.model_validate({**raw, "environment": "dev"}).to_k8s()
        digest = p.spec_hash(spec)
        envelope = {
            "v": p.PROTOCOL_VERSION,
            "type": "desired.put",
            "id": "0" * 32,
            "seq": worst,
            "body": {
                "key": "ChoreoApp/dev/some-app",
                "kind": "ChoreoApp",
                "revision": worst,
                "prev": worst,
                "specHash": digest,
                "spec": spec,
                "metadata": {"environment": "dev", "name": "some-app"},
            },
        }
        assert put_frame_bytes("ChoreoApp", "dev", "some-app", spec, digest) == len(_dumps(envelope)), target


# -- finding 4 ---------------------------------------------------------------------------------
async def test_finding4_promotion_takes_only_the_digest_from_the_data_plane(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await register(http, "dp1")
    await register(http, "dp2")
    await put_env(http, "dp1", "dev")
    await put_env(http, "dp2", "prod")
    await put_app(http, "dp1", "dev", "shop", app_spec(image="ghcr.io/acme/shop:1"))
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1", epoch=epoch, revision=2)

    async def report(image: str) -> None:
        item = p.StatusItem(
            key="ChoreoApp/dev/shop", status={"phase": "Ready", "image": image}, observed_at="t"
        )
        await agent.send(p.StatusBatch(items=[item]))

        async def stored() -> bool:
            r = await http.get(f"{APP_URL}/shop")
            return bool((r.json()["status"] or {}).get("image") == image)

        await eventually(stored, what=f"status with {image}")

    request = {
        "app": "shop",
        "from": {"dataplane": "dp1", "environment": "dev"},
        "to": {"dataplane": "dp2", "environment": "prod"},
    }
    # dp1's token, a status naming another repository (allowed at the target by prefix)
    backdoor = "ghcr.io/acme/backdoor@sha256:" + "66" * 32
    await report(backdoor)
    r = await http.post("/api/v1/promotions", json=request)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "ghcr.io/acme/backdoor" in detail and "ghcr.io/acme/shop" in detail and "digest" in detail
    assert (await http.get("/api/v1/dataplanes/dp2/environments/prod/apps/shop")).status_code == 404
    assert await revision(http, "dp2") == 1
    # the app's own repository, spelled as the kubelet reports it: the digest moves
    digest = "sha256:" + "77" * 32
    await report(f"ghcr.io/acme/shop@{digest}")
    r = await http.post("/api/v1/promotions", json=request)
    assert r.status_code == 202, r.text
    assert r.json()["image"] == f"ghcr.io/acme/shop@{digest}"
    got = (await http.get("/api/v1/dataplanes/dp2/environments/prod/apps/shop")).json()
    assert got["spec"]["image"] == f"ghcr.io/acme/shop@{digest}"
    await agent.close()


# -- finding 8: nested status ------------------------------------------------------------------
async def test_finding8_a_deeply_nested_status_is_refused_and_the_app_list_keeps_answering(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    await put_app(http, "dp1", "dev", "a")
    await put_app(http, "dp1", "dev", "b")
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1", epoch=epoch, revision=3)
    deep: dict[str, Any] = {}
    for _ in range(255):
        deep = {"x": deep}
    # pydantic cannot even serialise this; the hostile agent writes the JSON itself
    item = {"key": "ChoreoApp/dev/a", "status": {"phase": "Ready", "extra": deep}, "observedAt": "t"}
    frame_id = await agent.send_json("status.batch", {"items": [item]})
    refusal = (await agent.recv()).body
    assert isinstance(refusal, p.Error) and refusal.code == "bad_body" and refusal.ref == frame_id
    assert "ChoreoApp/dev/a" in refusal.message and "deeper" in refusal.message
    # a later, valid report of another app is stored: by then the refused one would have been too
    ok = p.StatusItem(key="ChoreoApp/dev/b", status={"phase": "Ready"}, observed_at="t")
    await agent.send(p.StatusBatch(items=[ok]))

    async def b_reported() -> bool:
        return bool((await http.get(f"{APP_URL}/b")).json()["status"])

    await eventually(b_reported, what="b's status stored")
    await server.store.flush()
    listed = await http.get(APP_URL)
    assert listed.status_code == 200, listed.text[:300]
    statuses = {item["name"]: item["status"] for item in listed.json()["items"]}
    assert statuses == {"a": None, "b": {"phase": "Ready"}}
    await agent.close()


# -- finding 8: a million inventory items ------------------------------------------------------
async def test_finding8_a_million_item_inventory_is_refused_at_the_bound(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    for i in range(3):
        await put_app(http, "dp1", "dev", f"a{i}")
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1", inventory_count=1_000_000)
    begin = (await agent.recv()).body
    assert isinstance(begin, p.SnapshotBegin)
    received: list[p.Frame] = []
    held: list[int] = []

    async def read() -> None:
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                received.append(await agent.recv(timeout=30))

    reader = asyncio.create_task(read())
    chunks = 1_000_000 // p.INVENTORY_CHUNK_ITEMS
    sent = 0
    try:
        for i in range(chunks):
            items = {f"ChoreoApp/e{i}/a{j}": f"{j:064x}" for j in range(p.INVENTORY_CHUNK_ITEMS)}
            if i == 0:  # the desired keys are in it too, with the hashes the agent "has"
                items.update(dict.fromkeys((f"ChoreoApp/dev/a{j}" for j in range(3)), "0" * 64))
            await agent.send(p.Inventory(chunk=i, last=i == chunks - 1, buckets=None, items=items))
            sent += len(items)
            session = server.cp.hub.get("dp1")
            if session is not None:
                held.append(session.inventory_held)  # type: ignore[attr-defined]
            if reader.done():
                break
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(reader, 30)
    errors = [f.body for f in received if isinstance(f.body, p.Error)]
    goaways = [f.body for f in received if isinstance(f.body, p.GoAway)]
    assert errors and "inventory larger than" in errors[0].message, received[:3]
    assert goaways and "resync refused" in goaways[0].reason
    assert not any(f.type == "snapshot.end" for f in received)
    assert sent < 1_000_000  # refused long before the end, not after holding it all
    # only the hashes of keys it desires are ever held: 4 objects, not a million keys
    assert held and max(held) <= 4, max(held)
    # and the data plane can resync normally afterwards
    again = await RawAgent.connect(server.tunnel_url, token)
    await again.hello("dp1")
    assert (await again.recv()).type == "snapshot.begin"
    await again.send(p.Inventory(chunk=0, last=True, buckets=None, items={}))
    frames = await again.recv_until("snapshot.end")
    assert sum(isinstance(f.body, p.DesiredPut) for f in frames) == 4
    await again.close()


# -- finding 8: 400 instead of 422 -------------------------------------------------------------
UNPARSEABLE: list[tuple[str, bytes, str | None]] = [
    ("invalid JSON", b"{not json", "application/json"),
    ("not UTF-8", b'{"spec": {"displayName": "\x80"}}', "application/json"),
    ("not UTF-8, no content type", b"\xff\xfe\x00", None),
    ("not UTF-8, text/plain", b"\x80\x81", "text/plain"),
    ("nested beyond the recursion limit", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("integer beyond the digit limit", b'{"spec": {"quota": {"pods": 1' + b"0" * 5000 + b"}}}", "application/json"),
    ("NaN", b'{"spec": {"displayName": NaN}}', "application/json"),
    ("infinite number", b'{"spec": {"displayName": 1e999}}', "application/json"),
    ("JSON without a JSON content type", b'{"spec": {}}', "text/plain"),
    ("form data", b"spec=1", "application/x-www-form-urlencoded"),
    ("an unpaired surrogate", b'{"spec": {"displayName": "\\ud800"}}', "application/json"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "content_type"), UNPARSEABLE, ids=[c[0] for c in UNPARSEABLE])
async def test_finding8_every_unparseable_body_gets_422(
    http: httpx.AsyncClient, case: str, body: bytes, content_type: str | None
) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/api/v1/dataplanes/dp1/environments/dev", f"{APP_URL}/a", "/api/v1/promotions"):
        method = "POST" if path.endswith("promotions") else "PUT"
        r = await http.request(method, path, content=body, headers=headers)
        assert r.status_code == 422, (case, path, r.status_code, r.text[:200])
        detail = r.json()["detail"]
        assert isinstance(detail, list) and detail[0]["loc"][0] == "body", detail
    assert await revision(http) == 1


# -- finding 8: auth before body ---------------------------------------------------------------
async def raw_request(server: ControlPlaneServer, head: str, body: bytes = b"") -> bytes:
    """Send ``head`` (and maybe part of a body) and return the status line of the answer, which
    must come without the rest of the body ever being sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), FRAME_TIMEOUT)
    finally:
        writer.close()


async def test_finding8_authentication_comes_before_the_body(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    async with httpx.AsyncClient(base_url=server.url) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            r = await anon.put(
                f"{APP_URL}/a", content=b"{not json", headers={**headers, "content-type": "application/json"}
            )
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
            r = await anon.post("/api/v1/promotions", content=b"\xff" * 10, headers=headers)
            assert r.status_code == 401
    # the body is not read: a request announcing a body it never sends is answered at once,
    # and one announcing more than the body limit gets 401, not 413
    for length in (1000, 10 * 1024 * 1024):
        head = (
            f"PUT {APP_URL}/a HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n"
        )
        status = await raw_request(server, head, b'{"spec": ')
        assert status.startswith(b"HTTP/1.1 401"), (length, status)
    # with the token, the same half-sent body is waited for (nothing is answered early)
    head = (
        f"PUT {APP_URL}/a HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 1000\r\n"
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(raw_request(server, head, b'{"spec": '), 0.5)
    assert await revision(http) == 1


# -- issue 12 "Images": the allowlist at push time -----------------------------------------------
async def test_the_registry_allowlist_is_checked_when_an_app_is_pushed(http: httpx.AsyncClient) -> None:
    await register(http)
    await put_env(http, "dp1", "dev", {"registry": {"allowedPrefixes": ["ghcr.io/acme/"]}})
    await put_env(http, "dp1", "open", {"registry": {"allowedPrefixes": ["*"]}})
    await put_env(http, "dp1", "closed", {"displayName": "no registry rules"})
    before = await revision(http)
    refused = {
        "dev": [
            "docker.io/evil/miner:1",  # finding 2's image
            "ghcr.io/acmeevil/x:1",  # a string prefix, not a path segment
            "ghcr.io/acme.evil.io/x:1",
            "ghcr.io.evil.io/acme/x:1",  # another registry
            "docker.io/library/../../evil/x",  # not an image at all
        ],
        "closed": ["ghcr.io/acme/shop:1"],  # no allowlist admits nothing
    }
    for env, images in refused.items():
        for image in images:
            r = await http.put(
                f"/api/v1/dataplanes/dp1/environments/{env}/apps/a", json={"spec": app_spec(image=image)}
            )
            assert r.status_code == 422, (env, image, r.text)
            error = r.json()["detail"][0]
            assert error["loc"] == ["body", "spec", "image"], error
            assert image in error["msg"], error
            if ".." not in image:  # an invalid reference is refused by the model before any rule
                assert f"Environment {env!r}" in error["msg"], error
    r = await http.put(
        "/api/v1/dataplanes/dp1/environments/closed/apps/a",
        json={"spec": app_spec(image="ghcr.io/acme/shop:1")},
    )
    assert "allowedPrefixes" in r.json()["detail"][0]["msg"]
    assert await revision(http) == before
    assert await put_app(http, "dp1", "dev", "a", app_spec(image="ghcr.io/acme/team/shop:1")) == before + 1
    assert await put_app(http, "dp1", "open", "a", app_spec(image="nginx")) == before + 2


# -- issue 12 "Quantities": the models' grammar answers at the REST edge -------------------------
async def test_invalid_quantities_are_refused_at_push(http: httpx.AsyncClient) -> None:
    await register(http)
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev", json={"spec": {"quota": {"cpu": "1Zz"}}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "spec", "quota"], r.text
    await put_env(http, "dp1", "dev")
    spec = app_spec(resources={"limits": {"cpu": "1Zz", "memory": "512Mi"}})
    r = await http.put(f"{APP_URL}/a", json={"spec": spec})
    assert r.status_code == 422 and "cpu" in r.json()["detail"][0]["loc"], r.text
    assert await revision(http) == 1
