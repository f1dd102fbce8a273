"""spec.files end to end: the real operator (kopf) with the real Key Vault sync against the HTTPS fakes,
on the emulator and on the real cluster (``operator_cluster``).

Files are mounted (the Deployment's volumes and mounts, the ConfigMap, the Secret), a content change
and a Key Vault rotation each roll the pods, a hand edit of the ConfigMap is put back, and the
ConfigMap is pruned when the plain files go.
"""

from __future__ import annotations

import base64
import posixpath
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.api.files import file_key
from choreo_dp.api.vocabulary import FILES_HASH_ANNOTATION, SECRETS_HASH_ANNOTATION
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.secrets import SecretSyncer, TransportSettings
from tests.fakes_azure import FakeEntra, FakeKeyVault, FakePki, FakeVault, loopback_localhost_names
from tests.operator.harness import Cluster, choreoapp, environment, eventually, running_operator

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

TENANT = str(uuid.UUID(int=0xF1))
CLIENT = str(uuid.UUID(int=0xF2))
CONFIG = "/config/app.yaml"
TLS = "/secrets/tls.key"


@dataclass
class Setup:
    cluster: Cluster
    vault: FakeVault
    dev: str
    ns: str

    @property
    def kube(self) -> KubeClient:
        return self.cluster.kube


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(operator_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("files-kv")
    cluster = operator_cluster
    pki = FakePki(tmp, ["kv-files.localhost"])
    token = "eyJhbGciOiJSUzI1NiJ9.files-e2e." + uuid.uuid4().hex
    (tmp / "token").write_text(token)
    with loopback_localhost_names(), pytest.MonkeyPatch.context() as mp:
        entra = await FakeEntra(pki.server_context()).start()
        kv = await FakeKeyVault(entra, pki.server_context()).start()
        try:
            kv.add_vault("kv-files", TENANT, {CLIENT})
            entra.trust(TENANT, CLIENT, token)
            mp.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp / "token"))
            mp.setenv("AZURE_CLIENT_ID", CLIENT)
            mp.setenv("AZURE_TENANT_ID", TENANT)
            mp.setenv("AZURE_AUTHORITY_HOST", entra.authority)
            transport = TransportSettings(
                connection_verify=str(pki.ca_path), connection_timeout=2.0, read_timeout=3.0, retry_total=2
            )

            def factory(kube: KubeClient) -> SecretSyncer:
                return SecretSyncer(kube, transport=transport, failure_backoff=(0.2, 1.0))

            dev = cluster.env_name("files")
            ns = f"choreo-{dev}"
            vault = kv.vaults["kv-files"]
            async with running_operator(cluster, secrets_factory=factory):
                key_vault = {"url": kv.url("kv-files"), "refreshInterval": "1s"}
                await cluster.kube.apply(environment(dev, keyVault=key_vault), "test")
                await eventually(lambda: cluster.kube.get(R.NAMESPACES, ns), what="namespace")
                yield Setup(cluster, vault, dev, ns)
        finally:
            await kv.stop()
            await entra.stop()


async def _ready_with(
    s: Setup, name: str, annotation: str, value: str | None = None
) -> dict[str, Any] | None:
    """The Deployment once the app is Ready and every pod carries the template's ``annotation``
    (``value`` if given): the pods have rolled onto it."""
    app = await s.kube.get(R.CHOREOAPPS, name, s.ns)
    dep = await s.kube.get(R.DEPLOYMENTS, name, s.ns)
    if app is None or dep is None or (app.get("status") or {}).get("phase") != "Ready":
        return None
    want = dep["spec"]["template"]["metadata"].get("annotations", {}).get(annotation)
    if want is None or (value is not None and want != value):
        return None
    pods, _ = await s.kube.list(R.PODS, s.ns, label_selector=f"choreo.dev/app={name}")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not live or {(p["metadata"].get("annotations") or {}).get(annotation) for p in live} != {want}:
        return None
    return dep


def _landed(dep: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Mount path -> (source kind, object name, key), from the Deployment as the API server stored it."""
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for mount in spec["containers"][0]["volumeMounts"]:
        projected = volumes[mount["name"]].get("projected")
        if projected is None:
            continue
        assert mount.get("readOnly") is True and "subPath" not in mount
        for source in projected["sources"]:
            ((kind, body),) = source.items()
            for item in body["items"]:
                if kind == "secret":
                    assert item["mode"] == 0o400
                out[posixpath.join(mount["mountPath"], item["path"])] = (kind, body["name"], item["key"])
    return out


async def test_files_mounted_and_a_content_change_rolls_the_pods(setup: Setup) -> None:
    s = setup
    s.vault.set_secret("tls-key", tls := "tls-" + uuid.uuid4().hex)
    files = [
        {"mountPath": CONFIG, "content": "level: info\n"},
        {"mountPath": TLS, "keyVaultSecret": "tls-key"},
    ]
    await s.kube.apply(choreoapp("web", s.dev, files=files), "test")
    dep = await eventually(lambda: _ready_with(s, "web", FILES_HASH_ANNOTATION), what="web Ready with files")
    assert _landed(dep) == {
        CONFIG: ("configMap", "web-files", file_key(CONFIG)),
        TLS: ("secret", "web-secrets", file_key(TLS)),
    }
    assert dep["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
    cm = await s.kube.get(R.CONFIGMAPS, "web-files", s.ns)
    assert cm is not None and cm["data"] == {file_key(CONFIG): "level: info\n"}
    app = await s.kube.get(R.CHOREOAPPS, "web", s.ns)
    assert app is not None
    [owner] = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ChoreoApp", app["metadata"]["uid"], True)
    secret = await s.kube.get(R.SECRETS, "web-secrets", s.ns)
    assert secret is not None
    assert base64.b64decode(secret["data"][file_key(TLS)]).decode() == tls
    conditions = {c["type"]: c for c in app["status"]["conditions"]}
    assert conditions["SecretsSynced"]["status"] == "True"

    before = dep["spec"]["template"]["metadata"]["annotations"][FILES_HASH_ANNOTATION]
    files[0]["content"] = "level: debug\n"
    await s.kube.apply(choreoapp("web", s.dev, files=files), "test")

    async def rolled() -> dict[str, Any] | None:
        d = await _ready_with(s, "web", FILES_HASH_ANNOTATION)
        return (
            d
            if d and d["spec"]["template"]["metadata"]["annotations"][FILES_HASH_ANNOTATION] != before
            else None
        )

    await eventually(rolled, what="pods rolled onto the new file content")
    cm = await s.kube.get(R.CONFIGMAPS, "web-files", s.ns)
    assert cm is not None and cm["data"] == {file_key(CONFIG): "level: debug\n"}


async def test_a_rotated_file_secret_updates_the_secret_and_rolls_the_pods(setup: Setup) -> None:
    s = setup
    s.vault.set_secret("api-cert", "cert-" + uuid.uuid4().hex)
    files = [{"mountPath": "/certs/api.pem", "keyVaultSecret": "api-cert"}]
    await s.kube.apply(choreoapp("api", s.dev, type="worker", files=files), "test")
    dep = await eventually(lambda: _ready_with(s, "api", SECRETS_HASH_ANNOTATION), what="api Ready")
    before = dep["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION]
    # Only secret files: no ConfigMap.
    assert await s.kube.get(R.CONFIGMAPS, "api-files", s.ns) is None

    s.vault.set_secret("api-cert", rotated := "cert-" + uuid.uuid4().hex)

    async def in_secret() -> bool:
        secret = await s.kube.get(R.SECRETS, "api-secrets", s.ns)
        data = (secret or {}).get("data") or {}
        return base64.b64decode(data.get(file_key("/certs/api.pem"), "")).decode() == rotated

    await eventually(in_secret, what="the rotated value in the Secret")

    async def rolled() -> dict[str, Any] | None:
        d = await _ready_with(s, "api", SECRETS_HASH_ANNOTATION)
        return (
            d
            if d and d["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION] != before
            else None
        )

    await eventually(rolled, what="pods rolled onto the rotated file secret")


async def test_configmap_drift_is_repaired_and_it_is_pruned_with_the_files(setup: Setup) -> None:
    s = setup
    files = [{"mountPath": "/config/a.ini", "content": "a=1\n"}]
    await s.kube.apply(choreoapp("cfg", s.dev, type="worker", files=files), "test")
    await eventually(lambda: _ready_with(s, "cfg", FILES_HASH_ANNOTATION), what="cfg Ready")
    key = file_key("/config/a.ini")
    await s.kube.patch(R.CONFIGMAPS, "cfg-files", {"data": {key: "a=hacked\n"}}, s.ns)

    async def repaired() -> bool:
        cm = await s.kube.get(R.CONFIGMAPS, "cfg-files", s.ns)
        return cm is not None and cm["data"] == {key: "a=1\n"}

    await eventually(repaired, what="the hand-edited ConfigMap put back")

    await s.kube.apply(choreoapp("cfg", s.dev, type="worker", files=[]), "test")

    async def pruned() -> bool:
        return await s.kube.get(R.CONFIGMAPS, "cfg-files", s.ns) is None

    await eventually(pruned, what="the ConfigMap pruned once the app has no files")
    dep = await s.kube.get(R.DEPLOYMENTS, "cfg", s.ns)
    assert dep is not None and [v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


async def test_an_invalid_path_is_refused_by_the_apiserver_or_the_operator(setup: Setup) -> None:
    s = setup
    body = choreoapp("bad", s.dev, type="worker", files=[{"mountPath": "/tmp/x", "content": "x"}])
    # The CRD schema knows only the shape; the rule is the model's, reported on the app.
    await s.kube.apply(body, "test")

    async def failed() -> dict[str, Any] | None:
        app = await s.kube.get(R.CHOREOAPPS, "bad", s.ns)
        status = (app or {}).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = await eventually(failed, what="the app Failed for its file path")
    assert "must not be under /tmp" in status["message"]
    assert await s.kube.get(R.DEPLOYMENTS, "bad", s.ns) is None
