"""The tunnel endpoint, driven frame by frame by a raw agent over real loopback sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trustme
import websockets

from choreo_cp.server import ControlPlaneServer
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    RawAgent,
    app_spec,
    eventually,
    put_app,
    put_env,
    register,
)


async def seeded(http: httpx.AsyncClient, apps: int = 3) -> str:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    for i in range(apps):
        await put_app(http, "dp1", "dev", f"a{i}")
    return token


async def test_handshake_refusals(server: ControlPlaneServer, http: httpx.AsyncClient) -> None:
    token = await register(http)
    with pytest.raises(websockets.InvalidStatus) as exc:
        await RawAgent.connect(server.tunnel_url, "cpdp_not-a-token")
    assert exc.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as exc:
        await RawAgent.connect(server.tunnel_url, ADMIN_TOKEN)  # the admin token is not a dataplane token
    assert exc.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as exc:
        await RawAgent.connect(server.tunnel_url, token, subprotocol=False)
    assert exc.value.response.status_code == 400
    agent = await RawAgent.connect(server.tunnel_url, token)
    assert agent.ws.subprotocol == p.SUBPROTOCOL
    await agent.send(p.Hello(dataplane_id="someone-else", versions=[1]))
    frame = await agent.recv()
    assert isinstance(frame.body, p.Error) and frame.body.code == "unauthorized"
    with pytest.raises(websockets.ConnectionClosed):
        await agent.recv()
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.send(p.Hello(dataplane_id="dp1", versions=[7, 8]))
    frame = await agent.recv()
    assert isinstance(frame.body, p.Error) and frame.body.code == "unsupported_version"


async def test_fresh_agent_resync_sends_only_differences(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http, apps=40)
    snap = await server.store.snapshot("dp1")
    # the agent already has everything except: a7 differs, a8 is missing, and it has an extra key
    agent_items = dict(snap.hashes)
    agent_items["ChoreoApp/dev/a7"] = "0" * 64
    del agent_items["ChoreoApp/dev/a8"]
    agent_items["ChoreoApp/dev/stale"] = "1" * 64
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello("dp1", inventory_count=len(agent_items))
    assert welcome.mode == "resync" and welcome.epoch == snap.epoch and welcome.revision == 41
    begin = (await agent.recv()).body
    assert isinstance(begin, p.SnapshotBegin) and begin.total == 41 and begin.revision == 41
    theirs = p.decode_digests(begin.digests, begin.buckets)
    differing = p.differing_buckets(p.bucket_digests(agent_items, begin.buckets), theirs)
    assert 1 <= len(differing) <= 3
    for frame in p.inventory_frames(differing, p.in_buckets(agent_items, differing, begin.buckets)):
        await agent.send(frame)
    frames = await agent.recv_until("snapshot.end")
    puts = [f.body for f in frames if isinstance(f.body, p.DesiredPut)]
    same = [k for f in frames if isinstance(f.body, p.SnapshotKeys) for k in f.body.keys]
    assert sorted(b.key for b in puts) == ["ChoreoApp/dev/a7", "ChoreoApp/dev/a8"]
    assert all(b.prev is None and b.spec_hash == p.spec_hash(b.spec) for b in puts)
    in_compared = {k for k in snap.hashes if p.bucket_of(k, begin.buckets) in set(differing)}
    assert set(same) == in_compared - {"ChoreoApp/dev/a7", "ChoreoApp/dev/a8"}
    end = frames[-1].body
    assert isinstance(end, p.SnapshotEnd) and end.revision == 41
    # changes after the snapshot stream incrementally, chained from its revision
    await put_app(http, "dp1", "dev", "late")
    put = (await agent.recv()).body
    assert isinstance(put, p.DesiredPut) and put.key == "ChoreoApp/dev/late" and put.prev == 41
    await agent.send(p.Applied(revision=42, epoch=snap.epoch))

    async def view() -> dict[str, object]:
        return (await http.get("/api/v1/dataplanes/dp1")).json()  # type: ignore[no-any-return]

    await eventually(lambda: _applied(view, 42), what="applied revision recorded")
    # acknowledged is not in sync: only the agent's inventory digest says what the cluster holds
    assert (await view())["inSync"] is False
    desired = dict((await server.store.snapshot("dp1")).hashes)
    summary = p.InventorySummary(count=len(desired), digest=p.inventory_digest(desired), revision=42)
    await agent.send(p.Heartbeat(time="now", inventory=summary))

    async def in_sync() -> bool:
        return bool((await view())["inSync"])

    await eventually(in_sync, what="in sync once the inventory digest matches")
    await agent.close()


async def _applied(view: Callable[[], Awaitable[dict[str, object]]], revision: int) -> bool:
    return (await view())["appliedRevision"] == revision


async def test_incremental_from_the_agents_revision(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http, apps=3)  # revisions 1..4
    await put_app(http, "dp1", "dev", "a1", app_spec(image="ghcr.io/acme/shop:2"))  # 5 supersedes 3
    await http.delete("/api/v1/dataplanes/dp1/environments/dev/apps/a2")  # 6
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello("dp1", epoch=epoch, revision=2)
    assert welcome.mode == "incremental" and welcome.revision == 6
    frames = [await agent.recv() for _ in range(2)]
    got = [(f.type, f.body.key, f.body.revision, f.body.prev) for f in frames]  # type: ignore[attr-defined]
    assert got == [("desired.put", "ChoreoApp/dev/a1", 5, 2), ("desired.delete", "ChoreoApp/dev/a2", 6, 5)]
    # nothing else is pending: a heartbeat is answered next, not another change
    hb = await agent.send(p.Heartbeat(time="now"))
    echo = await agent.recv()
    assert echo.type == "heartbeat" and echo.envelope.corr == hb
    await agent.close()


@pytest.mark.parametrize(
    ("agent_epoch", "agent_revision", "why"),
    [("other-epoch", 2, "epoch"), (None, 0, "fresh"), ("same", 99, "agent ahead")],
)
async def test_resync_when_incremental_is_impossible(
    server: ControlPlaneServer,
    http: httpx.AsyncClient,
    agent_epoch: str | None,
    agent_revision: int,
    why: str,
) -> None:
    token = await seeded(http, apps=1)
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello(
        "dp1", epoch=epoch if agent_epoch == "same" else agent_epoch, revision=agent_revision
    )
    assert welcome.mode == "resync", why
    assert (await agent.recv()).type == "snapshot.begin"
    await agent.close()


async def test_compacted_log_forces_resync(tmp_path: Path) -> None:
    server = make_server(tmp_path / "cp.db", log_limit=4)
    await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as http:
            token = await seeded(http, apps=12)
            view = (await http.get("/api/v1/dataplanes/dp1")).json()
            assert view["logHorizon"] > 2
            agent = await RawAgent.connect(server.tunnel_url, token)
            assert (await agent.hello("dp1", epoch=view["epoch"], revision=2)).mode == "resync"
            await agent.close()
            agent = await RawAgent.connect(server.tunnel_url, token)
            welcome = await agent.hello("dp1", epoch=view["epoch"], revision=view["logHorizon"])
            assert welcome.mode == "incremental"
            await agent.close()
    finally:
        await server.stop()


async def test_rest_changes_are_pushed_to_the_live_session(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await register(http)
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello("dp1")
    assert welcome.mode == "resync" and welcome.revision == 0
    begin = (await agent.recv()).body
    assert isinstance(begin, p.SnapshotBegin) and begin.total == 0
    await agent.send(p.Inventory(chunk=0, last=True, buckets=[], items={}))
    assert (await agent.recv()).type == "snapshot.end"
    await put_env(http, "dp1", "dev")
    await put_app(http, "dp1", "dev", "a")
    first, second = (await agent.recv()).body, (await agent.recv()).body
    assert isinstance(first, p.DesiredPut) and (first.key, first.revision, first.prev) == (
        "Environment/dev",
        1,
        0,
    )
    assert isinstance(second, p.DesiredPut) and (second.key, second.prev) == ("ChoreoApp/dev/a", 1)
    assert second.metadata == {"environment": "dev", "name": "a"}
    await http.delete("/api/v1/dataplanes/dp1/environments/dev")
    dels = [(await agent.recv()).body for _ in range(2)]
    assert [(d.key, d.revision) for d in dels if isinstance(d, p.DesiredDelete)] == [
        ("ChoreoApp/dev/a", 3),
        ("Environment/dev", 4),
    ]
    await agent.close()


async def test_an_idle_agents_heartbeats_read_nothing_from_the_store(
    server: ControlPlaneServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is read when a commit is announced, not on every reply the writer sends, and a
    caught-up session judges an inventory summary against the head it knows: thousands of idle
    agents must not each cost database reads per heartbeat (issue 19's idle CPU)."""
    token = await seeded(http, apps=2)
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    assert (await agent.hello("dp1", epoch=epoch, revision=3)).mode == "incremental"
    hb = await agent.send(p.Heartbeat(time="now"))
    assert (await agent.recv()).envelope.corr == hb  # caught up: nothing was pending
    reads: list[str] = []
    real_changes, real_head = server.store.changes_since, server.store.head

    async def changes_since(dp: str, since: int, limit: int = 500) -> object:
        reads.append(f"changes since {since}")
        return await real_changes(dp, since, limit=limit)

    async def head(dp: str) -> tuple[str, int]:
        reads.append("head")
        return await real_head(dp)

    monkeypatch.setattr(server.store, "changes_since", changes_since)
    monkeypatch.setattr(server.store, "head", head)
    desired = dict((await server.store.snapshot("dp1")).hashes)
    summary = p.InventorySummary(count=len(desired), digest=p.inventory_digest(desired), revision=3)
    await agent.send(p.Applied(revision=3, epoch=epoch))
    for _ in range(20):
        hb = await agent.send(p.Heartbeat(time="now", inventory=summary))
        echo = await agent.recv()
        assert echo.type == "heartbeat" and echo.envelope.corr == hb

    async def in_sync() -> bool:
        return bool((await http.get("/api/v1/dataplanes/dp1")).json()["inSync"])

    await eventually(in_sync, what="the summaries judged: in sync")
    assert reads == []
    await put_app(http, "dp1", "dev", "a9")  # a commit is announced: read, sent
    pushed = (await agent.recv()).body
    assert isinstance(pushed, p.DesiredPut) and (pushed.key, pushed.prev) == ("ChoreoApp/dev/a9", 3)
    assert reads[0] == "changes since 3"
    await agent.close()


async def test_reports_reach_the_rest_api(server: ControlPlaneServer, http: httpx.AsyncClient) -> None:
    token = await seeded(http, apps=2)
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1", epoch=epoch, revision=3)
    image = "ghcr.io/acme/shop@sha256:" + "ef" * 32
    await agent.send(p.Applied(revision=3, epoch=epoch))
    await agent.send(
        p.StatusBatch(
            items=[
                p.StatusItem(key="ChoreoApp/dev/a0", status={"phase": "Progressing"}, observed_at="t1"),
                p.StatusItem(
                    key="ChoreoApp/dev/a0", status={"phase": "Ready", "image": image}, observed_at="t2"
                ),
            ]
        )
    )
    await agent.send(
        p.Nack(revision=3, key="ChoreoApp/dev/a1", code="invalid", message="refused", retryable=False)
    )
    await agent.send(p.Orphans(count=2, keys=["ChoreoApp/dev/x", "ChoreoApp/dev/y"], reason="epoch_changed"))

    async def reported() -> bool:
        app = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a0")).json()
        return bool(app["status"] and app["status"]["phase"] == "Ready")

    await eventually(reported, what="status stored")
    a0 = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a0")).json()
    assert a0["applied"] is True and a0["status"]["image"] == image
    a1 = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a1")).json()
    assert a1["applied"] is False and a1["lastError"]["code"] == "invalid"

    async def orphans_reported() -> bool:
        return bool((await http.get("/api/v1/dataplanes/dp1")).json()["orphans"] == 2)

    await eventually(orphans_reported, what="orphans stored")
    dp = (await http.get("/api/v1/dataplanes/dp1")).json()
    assert (
        dp["connected"]
        and dp["appliedRevision"] == 3
        and dp["orphanedKeys"] == ["ChoreoApp/dev/x", "ChoreoApp/dev/y"]
    )
    assert dp["lastHeartbeat"] is not None
    # a new spec clears the old refusal
    await put_app(http, "dp1", "dev", "a1", app_spec(image="ghcr.io/acme/shop:3"))
    assert (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a1")).json()["lastError"] is None
    await agent.close()


async def test_newest_session_wins(server: ControlPlaneServer, http: httpx.AsyncClient) -> None:
    token = await seeded(http, apps=1)
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    old = await RawAgent.connect(server.tunnel_url, token)
    await old.hello("dp1", epoch=epoch, revision=2)
    new = await RawAgent.connect(server.tunnel_url, token)
    welcome = await new.hello("dp1", epoch=epoch, revision=2)
    goaway = (await old.recv()).body
    assert isinstance(goaway, p.GoAway) and "newer session" in goaway.reason
    with pytest.raises(websockets.ConnectionClosed):
        await old.recv()
    dp = (await http.get("/api/v1/dataplanes/dp1")).json()
    assert dp["connected"] and dp["session"]["id"] == welcome.session
    # the survivor still gets changes
    await put_app(http, "dp1", "dev", "b")
    put = (await new.recv()).body
    assert isinstance(put, p.DesiredPut) and put.key == "ChoreoApp/dev/b"
    # rotating the token ends the session that used the old one
    await http.put("/api/v1/dataplanes/dp1", params={"rotateToken": "true"})
    assert isinstance((await new.recv()).body, p.GoAway)

    async def disconnected() -> bool:
        return not (await http.get("/api/v1/dataplanes/dp1")).json()["connected"]

    await eventually(disconnected, what="session gone")
    with pytest.raises(websockets.InvalidStatus):
        await RawAgent.connect(server.tunnel_url, token)


async def test_bad_frames_are_answered_never_fatal(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http, apps=1)
    epoch = (await http.get("/api/v1/dataplanes/dp1")).json()["epoch"]
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.send_raw("not json at all")  # before hello: answered, the session still opens
    assert (await agent.recv()).body.code == "bad_json"  # type: ignore[attr-defined]
    await agent.hello("dp1", epoch=epoch, revision=2)
    cases: list[tuple[str | bytes, str]] = [
        ('{"v":1,"type":"teleport","id":"x1","seq":1,"body":{}}', "unknown_type"),
        ('{"v":1,"type":"applied","id":"x2","seq":2,"body":{"revision":-4}}', "bad_body"),
        ('{"v":1,"type":"applied","id":"x3","seq":3,"body":{"revision":999}}', "protocol"),
        ('{"v":9,"type":"heartbeat","id":"x4","seq":4,"body":{}}', "unsupported_version"),
        ('{"v":1,"type":"desired.put","id":"x5","seq":5,"body":{"key":"Environment/x","kind":"Environment",'
         '"revision":1,"specHash":"' + "0" * 64 + '","spec":{}}}', "protocol"),
        ("[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]", "bad_envelope"),
        (b"\xff\xfe binary junk", "bad_json"),
        ("x" * (p.MAX_FRAME_BYTES + 10), "too_large"),
    ]  # fmt: skip
    for data, code in cases:
        await agent.send_raw(data)
        frame = await agent.recv()
        assert isinstance(frame.body, p.Error) and frame.body.code == code, (data[:60], frame.body)
    hb = await agent.send(p.Heartbeat())
    assert (await agent.recv()).envelope.corr == hb  # still alive after all of that
    # beyond the transport limit the library closes with 1009 before buffering it
    await agent.send_raw("y" * (p.TRANSPORT_MAX_BYTES + 1))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await agent.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_tls_tunnel_and_rest(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    server = make_server(tmp_path / "cp.db", tls_cert=str(cert_path), tls_key=str(key_path))
    await server.start()
    try:
        assert server.url.startswith("https://") and server.tunnel_url.startswith("wss://")
        trusted = ssl.create_default_context(cafile=str(ca_path))
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, verify=trusted
        ) as http:
            token = await register(http)
            await put_env(http, "dp1", "dev")
        agent = await RawAgent.connect(server.tunnel_url, token, ssl_context=trusted)
        welcome = await agent.hello("dp1")
        assert welcome.mode == "resync" and welcome.revision == 1
        await agent.close()
        other = trustme.CA()
        with pytest.raises(ssl.SSLCertVerificationError):
            await RawAgent.connect(
                server.tunnel_url,
                token,
                ssl_context=ssl.create_default_context(cadata=other.cert_pem.bytes().decode()),
            )
        async with httpx.AsyncClient(base_url=server.url) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")
    finally:
        await server.stop()


async def test_mtls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_ca = trustme.CA()
    client_cert = client_ca.issue_cert("agent@dp1")
    files = {
        "cert": server_cert.cert_chain_pems[0],
        "key": server_cert.private_key_pem,
        "client-ca": client_ca.cert_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / f"{name}.pem"))
    server = make_server(
        tmp_path / "cp.db",
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
        client_ca=str(tmp_path / "client-ca.pem"),
    )
    await server.start()
    try:
        _, dp_token, _ = await server.store.register_dataplane("dp1")
        assert dp_token is not None
        no_cert = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        with pytest.raises((websockets.ConnectionClosed, ssl.SSLError, OSError, websockets.InvalidMessage)):
            agent = await RawAgent.connect(server.tunnel_url, dp_token, ssl_context=no_cert)
            await agent.hello("dp1")
        with_cert = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        client_cert.configure_cert(with_cert)
        agent = await RawAgent.connect(server.tunnel_url, dp_token, ssl_context=with_cert)
        assert (await agent.hello("dp1")).mode == "resync"
        await agent.close()
    finally:
        await server.stop()


async def test_server_shutdown_sends_goaway(server: ControlPlaneServer, http: httpx.AsyncClient) -> None:
    token = await register(http)
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello("dp1")
    await agent.recv()  # snapshot.begin
    stopping = asyncio.create_task(server.stop())
    frames = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            frames.append(await agent.recv())
    await stopping
    assert any(isinstance(f.body, p.GoAway) for f in frames)


async def test_silent_agents_are_dropped(tmp_path: Path) -> None:
    from choreo_cp.context import TunnelSettings

    server = make_server(
        tmp_path / "cp.db", tunnel=TunnelSettings(hello_timeout=0.3, idle_timeout=0.6, heartbeat_interval=0.2)
    )
    await server.start()
    try:
        _, token, _ = await server.store.register_dataplane("dp1")
        assert token is not None
        mute = await RawAgent.connect(server.tunnel_url, token)  # never says hello
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await mute.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        quiet = await RawAgent.connect(server.tunnel_url, token)  # says hello, then nothing
        await quiet.hello("dp1")
        assert (await quiet.recv()).type == "snapshot.begin"
        with pytest.raises(websockets.ConnectionClosed):
            await quiet.recv()
        record = await server.store.get_dataplane("dp1")
        assert record is not None and record.last_disconnected is not None
        assert server.cp.hub.get("dp1") is None
    finally:
        await server.stop()
