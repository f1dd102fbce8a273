"""kubeconfig ``exec`` credential plugins against both targets.

On ``real`` the plugin prints a token minted by a ServiceAccount TokenRequest, and the client's
requests pass the fault proxy with that bearer token, which the real kube-apiserver then
authenticates (the proxy forwards a caller's own Authorization header instead of its admin
identity); a request that succeeds proves the token was sent. On ``emulator`` the API accepts
any token: there the tests prove when the plugin runs.
"""

from __future__ import annotations

import base64
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from choreo_dp.kube import ApiError, Backoff, KubeClient
from choreo_dp.kube import resources as R
from tests.fixtures.kube import FaultyApi, RealClusterProcess

PLUGIN = Path(__file__).with_name("fake_exec_plugin.py")
ROLEBINDINGS = R.Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)


@dataclass
class ExecSetup:
    api: FaultyApi
    token: str
    username: str | None  # who the API says we are (real only)
    dir: Path

    @property
    def count(self) -> int:
        counter = self.dir / "count"
        return int(counter.read_text()) if counter.exists() else 0

    def kubeconfig(
        self,
        tokens: list[str] | None = None,
        expires: datetime | None = None,
        api_version: str = "client.authentication.k8s.io/v1",
        env: dict[str, str] | None = None,
    ) -> Path:
        (self.dir / "tokens").write_text("\n".join(tokens or [self.token]))
        doc = yaml.safe_load(self.api.kubeconfig_path.read_text())
        ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
        user = next(u for u in doc["users"] if u["name"] == ctx["user"])["user"]
        user.pop("token", None)  # the proxy's client certificate stays: it admits us to the proxy
        variables = {"FAKE_EXEC_COUNT": str(self.dir / "count"), "FAKE_EXEC_TOKENS": str(self.dir / "tokens")}
        if expires is not None:
            variables["FAKE_EXEC_EXPIRES"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        variables.update(env or {})
        user["exec"] = {
            "apiVersion": api_version,
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [{"name": k, "value": v} for k, v in variables.items()],
            "interactiveMode": "Never",
        }
        path = self.dir / "exec.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
async def exec_setup(
    kube_faulty: FaultyApi, kube_faulty_target: RealClusterProcess | None, tmp_path: Path
) -> ExecSetup:
    if kube_faulty_target is None:
        return ExecSetup(kube_faulty, "any-token-will-do", None, tmp_path)
    ns, sa = kube_faulty.namespace, f"exec-{uuid.uuid4().hex[:6]}"
    # The namespace is the fixture's own and goes at teardown, with the account and its binding.
    async with await KubeClient.from_kubeconfig(kube_faulty_target.kubeconfig) as admin:
        await admin.create(R.SERVICEACCOUNTS, {"metadata": {"name": sa, "namespace": ns}})
        await admin.create(
            ROLEBINDINGS,
            {
                "metadata": {"name": sa, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            },
        )
        minted = await admin.request(
            "POST",
            R.SERVICEACCOUNTS.path(ns, sa, "token"),
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 600},
            },
        )
    return ExecSetup(kube_faulty, minted["status"]["token"], f"system:serviceaccount:{ns}:{sa}", tmp_path)


async def _whoami(kube: KubeClient) -> str:
    review = await kube.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


async def _use(setup: ExecSetup, kube: KubeClient, times: int) -> None:
    for _ in range(times):
        await kube.list(R.CONFIGMAPS, setup.api.namespace)
    if setup.username is not None:
        assert await _whoami(kube) == setup.username


@pytest.mark.parametrize(
    "api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
async def test_exec_credential_is_cached_until_it_expires(exec_setup: ExecSetup, api_version: str) -> None:
    path = exec_setup.kubeconfig(expires=datetime.now(UTC) + timedelta(hours=1), api_version=api_version)
    async with await KubeClient.from_kubeconfig(path) as kube:
        await _use(exec_setup, kube, 3)
    assert exec_setup.count == 1


async def test_an_expired_exec_credential_runs_the_plugin_again(exec_setup: ExecSetup) -> None:
    path = exec_setup.kubeconfig(expires=datetime.now(UTC) - timedelta(minutes=1))
    async with await KubeClient.from_kubeconfig(path) as kube:
        await _use(exec_setup, kube, 3)
    # every request found the credential expired; the whoami on real is a fourth
    assert exec_setup.count == (3 if exec_setup.username is None else 4)


async def test_a_refused_exec_credential_runs_the_plugin_again(exec_setup: ExecSetup) -> None:
    # The first run prints a token the API refuses: the real kube-apiserver answers 401 for it;
    # the emulator accepts any token, so it is told to answer the first list with a 401.
    path = exec_setup.kubeconfig(tokens=["not-a-valid-token", exec_setup.token])
    if exec_setup.api.emulated:
        exec_setup.api.faults.add(verb="list", resource="configmaps", status=401, count=1)
    async with await KubeClient.from_kubeconfig(path) as kube:
        await _use(exec_setup, kube, 2)
    assert exec_setup.count == 2


async def test_a_failing_plugin_is_a_credential_error(exec_setup: ExecSetup) -> None:
    path = exec_setup.kubeconfig(env={"FAKE_EXEC_TOKENS": str(exec_setup.dir / "missing")})
    async with await KubeClient.from_kubeconfig(path, backoff=Backoff(base=0.01, cap=0.02)) as kube:
        with pytest.raises(ApiError) as info:
            await kube.list(R.CONFIGMAPS, exec_setup.api.namespace)
    assert info.value.status == 401 and "exited with 1" in info.value.message
    assert "FileNotFoundError" in info.value.message  # the plugin's stderr, for the operator's log


async def test_exec_client_certificate(
    kube_faulty_target: RealClusterProcess | None, kube_faulty: FaultyApi, tmp_path: Path
) -> None:
    """A plugin may answer with a client certificate: on ``real`` the admin one, straight to the
    kube-apiserver (the fault proxy terminates TLS itself); on ``emulator`` (plain HTTP) only the
    plugin's run is checked."""
    source = kube_faulty_target.kubeconfig if kube_faulty_target is not None else kube_faulty.kubeconfig_path
    doc = yaml.safe_load(source.read_text())
    user = doc["users"][0]["user"]
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(base64.b64decode(user.get("client-certificate-data", "")))
    key.write_bytes(base64.b64decode(user.get("client-key-data", "")))
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [
                {"name": "FAKE_EXEC_COUNT", "value": str(tmp_path / "count")},
                {"name": "FAKE_EXEC_CERT", "value": str(cert)},
                {"name": "FAKE_EXEC_KEY", "value": str(key)},
            ],
        }
    }
    if kube_faulty_target is None:
        # the emulator's kubeconfig has no certificate to hand out; any PEM text passes the plugin
        cert.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    path = tmp_path / "exec-cert.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    async with await KubeClient.from_kubeconfig(path) as kube:
        namespaces, _ = await kube.list(R.NAMESPACES)
        assert any(n["metadata"]["name"] == "default" for n in namespaces)
        if kube_faulty_target is not None:
            assert await _whoami(kube) != "system:anonymous"
    assert (tmp_path / "count").read_text() == "1"


# Real only: the emulator serves plain HTTP, where no certificate is loaded.
async def test_an_unusable_exec_certificate_is_a_credential_error(
    real_cluster: RealClusterProcess, tmp_path: Path
) -> None:
    doc = yaml.safe_load(real_cluster.kubeconfig.read_text())
    (tmp_path / "c.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    (tmp_path / "k.pem").write_text("not a key\n")
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [
                {"name": "FAKE_EXEC_COUNT", "value": str(tmp_path / "count")},
                {"name": "FAKE_EXEC_CERT", "value": str(tmp_path / "c.pem")},
                {"name": "FAKE_EXEC_KEY", "value": str(tmp_path / "k.pem")},
            ],
        }
    }
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(doc))
    async with await KubeClient.from_kubeconfig(path) as kube:
        for runs in (1, 2):  # the unusable credential is not kept: the next request runs the plugin again
            with pytest.raises(ApiError) as info:
                await kube.list(R.NAMESPACES)
            assert info.value.status == 401 and "unusable" in info.value.message
            assert (tmp_path / "count").read_text() == str(runs)
