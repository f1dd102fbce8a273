"""The agent against an in-test control plane peer (real TLS on loopback) and a Kubernetes API.

Each test runs against the emulated API and against the real kube-apiserver (``apiserver`` in
conftest.py); its dataplane, Environment and namespace names come from ``names``, unique per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.agent.agent import Agent, AgentConfig, ConfigError, tunnel_url
from choreo_dp.agent.cluster import ANN_ORPHANED, ANN_REVISION, ANN_SPEC_HASH, LABEL_DATAPLANE
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P
from tests.proxies import ForwardProxy
from tests.tunnel.conftest import Faulty, Names, eventually
from tests.tunnel.fakecp import FakeControlPlane, frame_text

pytestmark = pytest.mark.timeout(60)


# the images the tests' apps use; an Environment without an allowlist admits no image at all
REGISTRY = {"allowedPrefixes": ["registry.example.com/", "r.example.com/"]}


def env_spec(**extra: Any) -> dict[str, Any]:
    return {"displayName": "Dev", "registry": REGISTRY, **extra}


def app_spec(env: str, image: str = "registry.example.com/app:1") -> dict[str, Any]:
    return {"environment": env, "project": "proj", "type": "service", "image": image, "replicas": 1}


@dataclass
class Running:
    agent: Agent
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


def config(
    cp: FakeControlPlane, token_file: Path, tls: dict[str, Any], names: Names, **kw: Any
) -> AgentConfig:
    base: dict[str, Any] = {
        "control_plane": cp.url,
        "dataplane_id": names.dp,
        "token_file": str(token_file),
        "ca_file": tls["ca_file"],
        "backoff_base": 0.05,
        "backoff_cap": 0.3,
        "proxy": None,
    }
    base.update(kw)
    return AgentConfig(**base)


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig, kube: KubeClient) -> AsyncIterator[Running]:
    agent = Agent(cfg, kube)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    r = Running(agent, task, stop)
    try:
        yield r
    finally:
        if not task.done():
            await r.halt()


async def apps(kube: KubeClient, ns: str) -> dict[str, dict[str, Any]]:
    items, _ = await kube.list(R.CHOREOAPPS, ns)
    return {i["metadata"]["name"]: i for i in items}


async def dataplane(kube: KubeClient, names: Names) -> dict[str, Any]:
    obj = await kube.get(R.DATAPLANES, names.dp)
    return (obj or {}).get("status") or {}


async def converged(cp: FakeControlPlane, kube: KubeClient, names: Names) -> bool:
    """Cluster == desired state, DataPlane persisted the cp's revision, cp got the ack."""
    st = await dataplane(kube, names)
    if st.get("appliedRevision") != cp.store.revision or st.get("epoch") != cp.store.epoch:
        return False
    if cp.applied != cp.store.revision:
        return False
    want = {k: P.spec_hash(spec) for k, (spec, _) in cp.store.desired.items()}
    have: dict[str, str] = {}
    for res in (R.ENVIRONMENTS, R.CHOREOAPPS):
        items, _ = await kube.list(res, label_selector={LABEL_DATAPLANE: names.dp})
        for obj in items:
            ann = obj["metadata"].get("annotations", {})
            if ann.get(ANN_ORPHANED):
                continue
            key = (
                P.environment_key(obj["metadata"]["name"])
                if obj["kind"] == "Environment"
                else P.app_key(obj["spec"]["environment"], obj["metadata"]["name"])
            )
            have[key] = ann[ANN_SPEC_HASH]
            if key in cp.store.desired and ann[ANN_SPEC_HASH] == P.spec_hash(cp.store.desired[key][0]):
                # the stamped revision is the one of the desired state it came from
                assert ann[ANN_REVISION] == str(cp.store.desired[key][1])
    return have == want


async def seed(cp: FakeControlPlane, n: int, names: Names) -> None:
    await cp.put(names.env_key, env_spec())
    for i in range(n):
        await cp.put(names.app_key(f"app-{i}"), app_spec(names.env))


# --------------------------------------------------------------------------------------------


async def test_happy_path_put_update_delete_and_status(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 3, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        assert fake_cp.modes == ["resync"]  # a fresh agent has no epoch
        st = await dataplane(kube, names)
        assert st["connected"] is True and st.get("lastHeartbeatTime")
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Connected"]["status"] == "True"
        app = (await apps(kube, names.ns))["app-0"]
        assert app["metadata"]["labels"][LABEL_DATAPLANE] == names.dp
        assert app["spec"]["image"] == "registry.example.com/app:1"
        # managedFields show server-side apply by the agent's field manager
        managers = {m.get("manager") for m in app["metadata"].get("managedFields", [])}
        assert "choreo-dp-agent" in managers

        await fake_cp.put(names.app_key("app-1"), app_spec(names.env, image="registry.example.com/app:2"))
        await fake_cp.delete(names.app_key("app-2"))
        await eventually(lambda: converged(fake_cp, kube, names), what="incremental changes")
        current = await apps(kube, names.ns)
        assert set(current) == {"app-0", "app-1"}
        assert current["app-1"]["spec"]["image"].endswith(":2")

        # status written by the operator flows back, coalesced
        for phase in ("Progressing", "Ready"):
            await kube.patch(
                R.CHOREOAPPS,
                "app-0",
                {"status": {"phase": phase, "revision": 2}},
                names.ns,
                subresource="status",
            )
        await eventually(
            lambda: fake_cp.statuses.get(names.app_key("app-0"), {}).get("phase") == "Ready",
            what="status upstream",
        )
        assert r.agent.store.writes == 6  # 1 env + 3 apps + 1 update + 1 delete, nothing else
    st = await dataplane(kube, names)
    assert st["connected"] is False


async def test_hand_made_objects_are_never_touched(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    manual = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": "manual", "namespace": names.ns},
        "spec": app_spec(names.env),
    }
    await kube.create(R.CHOREOAPPS, manual)
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        await fake_cp.delete(names.app_key("manual"))  # a delete for a key we do not own: no-op
        await eventually(lambda: converged(fake_cp, kube, names))
    assert "manual" in await apps(kube, names.ns)


async def test_agent_restart_resumes_incrementally_without_rewrites(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 5, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    await fake_cp.put(names.app_key("app-9"), app_spec(names.env))
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        assert fake_cp.modes[-1] == "incremental"
        assert fake_cp.hellos[-1].applied_revision == 6
        assert r.agent.store.writes == 1


async def test_control_plane_restart(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 2, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        port = fake_cp.port
        await fake_cp.kill_link()
        await fake_cp.stop()
        await eventually(lambda: r.agent.dp.connected is False, what="disconnect noticed")
        await fake_cp.put(names.app_key("app-5"), app_spec(names.env))  # committed while down
        await fake_cp.start(port)
        await eventually(lambda: converged(fake_cp, kube, names), what="converged after cp restart")
        assert fake_cp.modes[-1] == "incremental"


async def test_statuses_a_control_plane_lost_come_again_with_the_next_session(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    """Status reports are not acknowledged: a control plane killed before writing them, or a
    session that died with them in its socket, loses them. Every session starts by sending every
    current status again, also in incremental mode where nothing in the cluster changes."""
    await seed(fake_cp, 2, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        for i in range(2):
            await kube.patch(
                R.CHOREOAPPS,
                f"app-{i}",
                {"status": {"phase": "Ready", "ready": "1/1"}},
                names.ns,
                subresource="status",
            )
        keys = [names.app_key(f"app-{i}") for i in range(2)]
        await eventually(
            lambda: all(fake_cp.statuses.get(k, {}).get("phase") == "Ready" for k in keys), what="statuses"
        )
        port = fake_cp.port
        await fake_cp.kill_link()
        await fake_cp.stop()
        await eventually(lambda: r.agent.dp.connected is False, what="disconnect noticed")
        fake_cp.statuses.clear()  # killed before it wrote them
        await fake_cp.start(port)
        await eventually(
            lambda: all(fake_cp.statuses.get(k, {}).get("phase") == "Ready" for k in keys),
            what="statuses sent again",
        )
        assert fake_cp.modes[-1] == "incremental"


async def test_duplicated_and_reordered_frames(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    for i in range(2, 8):
        await fake_cp.put(names.app_key(f"app-{i}"), app_spec(names.env))
    await fake_cp.delete(names.app_key("app-3"))
    fake_cp.duplicate = True
    fake_cp.reorder = True
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        assert r.agent.store.writes == 7  # six puts, one delete: duplicates wrote nothing
        assert not fake_cp.errors and not fake_cp.nacks


@pytest.mark.parametrize(
    "point",
    [*(f"mid-stream-{n}" for n in random.Random(5).sample(range(1, 12), 3)), "after-persist-before-ack"],
)
async def test_link_killed_at_points_loses_and_duplicates_nothing(
    point: str,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    for i in range(10):
        await fake_cp.put(names.app_key(f"app-{i}"), app_spec(names.env, image=f"r.example.com/a:{i}"))
    await fake_cp.delete(names.app_key("app-0"))
    if point.startswith("mid-stream"):
        # the link dies after n frames: some changes written, some persisted, some only sent
        fake_cp.drop_after(int(point.rsplit("-", 1)[1]))
    else:
        fake_cp.drop_on_applied = True  # the agent persisted, the ack is lost
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        assert len(fake_cp.hellos) >= 3
        # every change written at most once across the reconnect: 9 updates + 1 new + 1 delete
        assert r.agent.store.writes <= 11


async def test_killed_mid_resync(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 6, names)
    fake_cp.drop_after(3)  # during the first (resync) snapshot
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        assert fake_cp.modes[:2] == ["resync", "resync"]
        # 7 objects; a write cut off by the drop may have landed uncounted, none is repeated
        assert r.agent.store.writes <= 7


async def test_restored_empty_or_older_backup_never_deletes(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 4, names)
    backup = fake_cp.snapshot_store()
    await fake_cp.put(names.app_key("late"), app_spec(names.env))
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    # 1) restored from an older backup with the same epoch: "late" is unknown upstream
    fake_cp.restore(backup, new_epoch=False)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        assert fake_cp.modes[-1] == "resync"
        assert fake_cp.orphan_reports[-1].keys == [names.app_key("late")]
        assert fake_cp.orphan_reports[-1].reason == "revision_regressed"
    assert "late" in await apps(kube, names.ns)
    st = await dataplane(kube, names)
    assert st["orphans"] == 1 and st["orphanedKeys"] == [names.app_key("late")]
    # 2) restored empty in a new epoch: nothing is deleted, everything is an orphan
    fake_cp.restore(type(fake_cp.store)(), new_epoch=True)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        await eventually(lambda: bool(fake_cp.orphan_reports) and fake_cp.orphan_reports[-1].count == 6)
    assert len(await apps(kube, names.ns)) == 5 and await kube.get(R.ENVIRONMENTS, names.env) is not None
    st = await dataplane(kube, names)
    assert st["orphans"] == 6
    assert {c["type"]: c for c in st["conditions"]}["OrphansHeld"]["status"] == "True"
    # 3) a later put adopts an orphan; a later explicit delete removes one
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        await fake_cp.put(names.env_key, env_spec())
        await fake_cp.put(names.app_key("app-1"), app_spec(names.env))
        await fake_cp.put(names.app_key("late"), app_spec(names.env))
        await fake_cp.delete(names.app_key("late"))
        await eventually(lambda: converged(fake_cp, kube, names))
    current = await apps(kube, names.ns)
    assert "late" not in current
    assert ANN_ORPHANED not in current["app-1"]["metadata"].get("annotations", {})
    assert ANN_ORPHANED in current["app-2"]["metadata"]["annotations"]


async def test_mass_deletion_in_a_resync_is_held(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 10, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    for i in range(3):  # 30 % of the apps, while the agent is away and the log is compacted
        await fake_cp.delete(names.app_key(f"app-{i}"))
    fake_cp.compact()
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        assert fake_cp.modes[-1] == "resync"
        assert fake_cp.orphan_reports[-1].reason == "mass_deletion"
    assert len(await apps(kube, names.ns)) == 10
    # an explicit, incremental delete in the same epoch is applied
    async with running(config(fake_cp, token_file, tls, names), kube):
        await fake_cp.delete(names.app_key("app-5"))
        await eventually(lambda: converged(fake_cp, kube, names))
    assert "app-5" not in await apps(kube, names.ns)
    # a small resync difference (1 of 7 non-orphaned apps) is deleted
    await fake_cp.delete(names.app_key("app-6"))
    fake_cp.compact()
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    assert "app-6" not in await apps(kube, names.ns)


async def test_oversized_and_garbage_frames_get_errors_and_the_agent_survives(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        rnd = random.Random(7)
        valid = frame_text("desired.put", {"key": names.app_key("x"), "kind": "ChoreoApp", "revision": 1})
        corpus: list[str | bytes] = [
            "x" * (P.MAX_FRAME_BYTES + 100),  # over 1 MiB, under the transport limit: error frame
            b"\x00\xff binary",
            "{",
            "null",
            frame_text("no.such.type", {}),
            frame_text("applied", {"revision": 1}, v=99),
            frame_text("desired.put", {"key": "Secret/x", "kind": "Secret"}),
            frame_text("snapshot.end", {"epoch": "e", "revision": 1}),
            frame_text("welcome", {"version": 1, "epoch": "e", "revision": 1, "mode": "resync"}),
        ]
        for _ in range(150):
            chars = list(valid)
            for _ in range(rnd.randint(1, 8)):
                chars[rnd.randrange(len(chars))] = chr(rnd.randint(0, 0x2FF))
            corpus.append("".join(chars))
        for frame in corpus:
            await fake_cp.send_raw(frame)
        errors_before = len(fake_cp.errors)
        await eventually(lambda: len(fake_cp.errors) >= errors_before + 9, what="error frames")
        codes = {e.code for e in fake_cp.errors}
        assert {
            "too_large",
            "bad_json",
            "unknown_type",
            "unsupported_version",
            "bad_body",
            "protocol",
        } <= codes
        await fake_cp.put(names.app_key("after"), app_spec(names.env))
        await eventually(lambda: converged(fake_cp, kube, names), what="still working after garbage")
        assert len(fake_cp.hellos) == 1  # the same session survived all of it
        # beyond the transport limit the library closes (1009); the agent reconnects and resumes
        await fake_cp.send_raw("y" * (P.TRANSPORT_MAX_BYTES + 10))
        await eventually(lambda: len(fake_cp.hellos) == 2, what="reconnect after 1009")
        await fake_cp.put(names.app_key("after2"), app_spec(names.env))
        await eventually(lambda: converged(fake_cp, kube, names))
        assert r.agent.sessions >= 1


async def test_invalid_token_long_backoff_condition_and_token_rotation(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    await asyncio.to_thread(token_file.write_text, "wrong\n")
    async with running(config(fake_cp, token_file, tls, names, unauthorized_backoff=300.0), kube) as r:

        async def unauthorized() -> bool:
            st = await dataplane(kube, names)
            conds = {c["type"]: c for c in st.get("conditions", [])}
            c = conds.get("Connected", {})
            return c.get("status") == "False" and c.get("reason") == "Unauthorized"

        await eventually(unauthorized, what="Unauthorized condition")
        assert r.agent.last_failure == "Unauthorized"
        await eventually(lambda: r.agent.next_delay is not None)
        assert r.agent.next_delay is not None and r.agent.next_delay >= 0.8 * 300.0  # the long backoff
        assert fake_cp.handshakes == 1
        await asyncio.to_thread(
            token_file.write_text, "tok\n"
        )  # rotated: picked up without waiting out the backoff
        await eventually(lambda: converged(fake_cp, kube, names), timeout=15)


async def test_wrong_ca_is_refused(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with running(config(fake_cp, token_file, tls, names, ca_file=str(other)), kube) as r:

        async def tls_error() -> bool:
            st = await dataplane(kube, names)
            conds = {c["type"]: c for c in st.get("conditions", [])}
            return conds.get("Connected", {}).get("reason") == "TLSVerifyFailed"

        await eventually(tls_error, what="TLSVerifyFailed condition")
        assert not fake_cp.hellos and r.agent.sessions == 0


async def test_mtls_client_certificate(
    kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names, tmp_path: Path
) -> None:
    ca = tls["ca"]
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    client = ca.issue_cert("dp1.agent")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cp = FakeControlPlane(ssl_context=server_ctx)
    await cp.start()
    try:
        await seed(cp, 1, names)
        cfg = config(
            cp,
            token_file,
            tls,
            names,
            client_cert=str(tmp_path / "c.pem"),
            client_key=str(tmp_path / "k.pem"),
        )
        async with running(cfg, kube):
            await eventually(lambda: converged(cp, kube, names))
        async with running(config(cp, token_file, tls, names), kube) as r:  # no client cert: refused
            await eventually(lambda: r.agent.last_failure is not None)
            assert r.agent.sessions == 0
    finally:
        await cp.stop()


async def test_https_proxy_is_honoured(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ForwardProxy().running() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        await seed(fake_cp, 1, names)
        async with running(config(fake_cp, token_file, tls, names, proxy=True), kube):
            await eventually(lambda: converged(fake_cp, kube, names))
        assert proxy.requests and proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{fake_cp.port} ")
        assert proxy.tunnels >= 1


async def test_dead_link_is_detected_by_ping_timeout(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    cfg = config(fake_cp, token_file, tls, names, ping_interval=0.2, ping_timeout=0.4)
    async with running(cfg, kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        silent = fake_cp.active
        assert silent is not None
        silent.transport.pause_reading()  # a silent peer: no pongs, no close
        await eventually(lambda: len(fake_cp.hellos) == 2, what="reconnect after dead link")
        assert r.agent.sessions >= 1
        # The server side of the dead link would wait its whole close timeout (10 s) at stop for
        # a close frame it can no longer read; drop it as a server would once it noticed.
        silent.transport.abort()


async def test_slow_kubernetes_api_with_429s_converges_with_bounded_queues(
    faulty: Faulty, fake_cp: FakeControlPlane, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    from choreo_dp.agent.session import OUTQ_FRAMES

    await seed(fake_cp, 1, names)
    window = 4
    kube = faulty.kube  # the agent's client: the one the faults act on
    async with running(config(fake_cp, token_file, tls, names, window=window), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        fault = faulty.faults.add(verb="patch", resource="choreoapps", status=429, count=60, retry_after=0)
        for i in range(40):
            await fake_cp.put(names.app_key(f"app-{i}"), app_spec(names.env))
        peak = {"tasks": 0, "outq": 0, "early": 0}

        async def done() -> bool:
            s = r.agent.session
            if s is not None:
                peak["tasks"] = max(peak["tasks"], len(s.tasks))
                peak["outq"] = max(peak["outq"], s.outq.qsize())
                peak["early"] = max(peak["early"], s.stream.buffered)
            return await converged(fake_cp, kube, names)

        await eventually(done, timeout=40, what="convergence under 429s")
        assert fault.hits == 60  # the slow path really was taken
        assert 1 <= peak["tasks"] <= window  # writes in flight never exceed the window
        assert peak["outq"] <= OUTQ_FRAMES and peak["early"] == 0
        assert len(r.agent.reporter.pending) <= len(r.agent.store.index)


def test_ws_scheme_refused_without_insecure() -> None:
    with pytest.raises(ConfigError):
        tunnel_url("ws://127.0.0.1:1", insecure=False)
    assert tunnel_url("ws://127.0.0.1:1", insecure=True) == "ws://127.0.0.1:1/api/v1/tunnel"
    assert tunnel_url("wss://cp.example.com:443", insecure=False) == "wss://cp.example.com:443/api/v1/tunnel"
    with pytest.raises(ConfigError):
        tunnel_url("ftp://x", insecure=True)


async def test_app_waits_for_its_namespace_then_nacks_retryable_and_holds_the_ack(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    late, late_ns = names("late"), names("ns-late")
    await fake_cp.put(P.environment_key(late), env_spec(namespace=late_ns))
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        r.agent.store.namespace_wait = 0.3
        await fake_cp.put(names.app_key("a", late), app_spec(late))
        await eventually(lambda: any(n.code == "namespace_missing" and n.retryable for n in fake_cp.nacks))
        assert fake_cp.applied == 1  # not acknowledged past the change that is not persisted
        await kube.create(
            R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": late_ns}}
        )
        await eventually(lambda: converged(fake_cp, kube, names), timeout=20)
    assert "a" in await apps(kube, late_ns)


async def test_invalid_spec_and_unknown_environment_are_nacked_for_good(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 0, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names))
        r.agent.store.environment_wait = 0.2
        ghost = names("ghost")
        await fake_cp.put(names.app_key("bad"), {"environment": names.env, "type": "nope"})
        await fake_cp.put(names.app_key("a", ghost), app_spec(ghost))
        await fake_cp.put(names.app_key("good"), app_spec(names.env))
        await eventually(lambda: fake_cp.applied == fake_cp.store.revision)
        assert {(n.key, n.code, n.retryable) for n in fake_cp.nacks} == {
            (names.app_key("bad"), "invalid_spec", False),
            (names.app_key("a", ghost), "environment_missing", False),
        }
        assert set(await apps(kube, names.ns)) == {"good"}


async def test_inventory_is_listed_in_pages(kube: KubeClient, names: Names) -> None:
    from choreo_dp.agent.cluster import list_pages

    for i in range(5):
        await kube.create(
            R.ENVIRONMENTS,
            {
                "apiVersion": "choreo.dev/v1alpha1",
                "kind": "Environment",
                "metadata": {"name": names(f"e{i}"), "labels": {LABEL_DATAPLANE: names.dp}},
                "spec": {},
            },
        )
    await kube.create(
        R.ENVIRONMENTS,
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "Environment",
            "metadata": {"name": names("x")},
            "spec": {},
        },
    )
    pages = [
        items async for items, _ in list_pages(kube, R.ENVIRONMENTS, {LABEL_DATAPLANE: names.dp}, page=2)
    ]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(i["metadata"]["name"] for p in pages for i in p) == [names(f"e{i}") for i in range(5)]
