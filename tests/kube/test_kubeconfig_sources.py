"""What kubectl reads, read the same way: merged KUBECONFIG files, proxy-url, tls-server-name,
insecure-skip-tls-verify, exec stanzas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import config as kubeconfig
from choreo_dp.kube import resources as R
from choreo_dp.kube.errors import ConfigError
from tests.fixtures.kube import FaultyApi, RealClusterProcess
from tests.proxies import ForwardProxy


def _doc(
    current: str | None,
    contexts: dict[str, tuple[str, str]],
    clusters: dict[str, dict[str, Any]],
    users: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [{"name": n, "context": {"cluster": c, "user": u}} for n, (c, u) in contexts.items()],
        "clusters": [{"name": n, "cluster": body} for n, body in clusters.items()],
        "users": [{"name": n, "user": body} for n, body in users.items()],
    }
    if current:
        doc["current-context"] = current
    return doc


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_files_merge_like_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _write(
        tmp_path / "one" / "config",
        _doc("shared", {"shared": ("k1", "u")}, {"k1": {"server": "https://one:6443"}}, {}),
    )
    second = _write(
        tmp_path / "two" / "config",
        _doc(
            "other",
            {"shared": ("k2", "u"), "other": ("k2", "u")},
            {"k1": {"server": "https://ignored:6443"}, "k2": {"server": "https://two:6443"}},
            {"u": {"tokenFile": "tok"}},
        ),
    )
    missing = tmp_path / "missing" / "config"
    monkeypatch.setenv("KUBECONFIG", f"{missing}:{first}:{second}")
    cfg = kubeconfig.load()
    # current-context and "shared" from the first file that sets them; its cluster k1 from the
    # first file too; the user only the second defines, its relative path against that file
    assert cfg.server == "https://one:6443"
    assert cfg.token_file == str(tmp_path / "two" / "tok")
    other = kubeconfig.from_kubeconfigs([first, second], context="other")
    assert other.server == "https://two:6443"


def test_no_kubeconfig_file_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    with pytest.raises(ConfigError, match="none of the kubeconfig files exist"):
        kubeconfig.load()


def _single(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None) -> Path:
    return _write(tmp_path / "kc", _doc("c", {"c": ("k", "u")}, {"k": cluster}, {"u": user or {}}))


def test_proxy_url_and_tls_server_name_are_read(tmp_path: Path) -> None:
    cfg = kubeconfig.from_kubeconfig(
        _single(
            tmp_path,
            {"server": "https://x:6443", "proxy-url": "http://proxy:3128", "tls-server-name": "api.internal"},
        )
    )
    assert (cfg.proxy_url, cfg.tls_server_name) == ("http://proxy:3128", "api.internal")
    with pytest.raises(ConfigError, match="only http and https proxies"):
        kubeconfig.from_kubeconfig(_single(tmp_path, {"server": "https://x", "proxy-url": "socks5://p:1080"}))


@pytest.mark.parametrize(
    ("stanza", "error"),
    [
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}, "is not one of"),
        ({"apiVersion": "client.authentication.k8s.io/v1"}, "exec needs a command"),
        (
            {"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "env": [{"value": "v"}]},
            "exec env",
        ),
        (
            {"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "interactiveMode": "Always"},
            "needs a terminal",
        ),
    ],
)
def test_unusable_exec_stanzas_are_config_errors(tmp_path: Path, stanza: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        kubeconfig.from_kubeconfig(_single(tmp_path, {"server": "https://x"}, {"exec": stanza}))


def test_a_relative_exec_command_resolves_against_its_kubeconfig(tmp_path: Path) -> None:
    stanza = {"apiVersion": "client.authentication.k8s.io/v1", "command": "bin/login"}
    cfg = kubeconfig.from_kubeconfig(_single(tmp_path, {"server": "https://x"}, {"exec": stanza}))
    assert cfg.exec_auth is not None and cfg.exec_auth.spec.command == str(tmp_path / "bin" / "login")
    bare = kubeconfig.from_kubeconfig(
        _single(tmp_path, {"server": "https://x"}, {"exec": {**stanza, "command": "kubelogin"}})
    )
    assert bare.exec_auth is not None and bare.exec_auth.spec.command == "kubelogin"  # from PATH


async def test_requests_and_watches_go_through_proxy_url(kube_faulty: FaultyApi, tmp_path: Path) -> None:
    doc = yaml.safe_load(kube_faulty.kubeconfig_path.read_text())
    async with ForwardProxy().running() as proxy:
        for cluster in doc["clusters"]:
            cluster["cluster"]["proxy-url"] = proxy.url
        path = tmp_path / "proxied.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        async with await KubeClient.from_kubeconfig(path) as kube:
            _, rv = await kube.list(R.CONFIGMAPS, kube_faulty.namespace)
            async for _ in kube.watch(
                R.CONFIGMAPS, kube_faulty.namespace, resource_version=rv, timeout_seconds=1
            ):
                pass
        # the real cluster's fault proxy speaks https: tunnelled; the emulator's http: forwarded
        if kube_faulty.emulated:
            assert proxy.forwarded >= 1 and proxy.tunnels == 0
        else:
            assert proxy.tunnels >= 1 and proxy.forwarded == 0


def _direct(real_cluster: RealClusterProcess, tmp_path: Path, **cluster: Any) -> Path:
    doc = yaml.safe_load(real_cluster.kubeconfig.read_text())
    body = doc["clusters"][0]["cluster"]
    for key, value in cluster.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    path = tmp_path / f"kc-{len(list(tmp_path.iterdir()))}"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _reaches(path: Path) -> bool:
    async with await KubeClient.from_kubeconfig(path, max_retries=0) as kube:
        try:
            await kube.list(R.NAMESPACES)
        except ApiError as exc:
            assert exc.status == 503 and "certificate" in exc.message.lower(), exc
            return False
    return True


# Real only: the emulator serves plain HTTP, where these TLS settings have nothing to act on.
async def test_tls_server_name_is_the_name_verified(real_cluster: RealClusterProcess, tmp_path: Path) -> None:
    assert await _reaches(_direct(real_cluster, tmp_path, **{"tls-server-name": "kubernetes.default.svc"}))
    assert not await _reaches(
        _direct(real_cluster, tmp_path, **{"tls-server-name": "not-the-apiserver.invalid"})
    )


async def test_insecure_skip_tls_verify(real_cluster: RealClusterProcess, tmp_path: Path) -> None:
    assert not await _reaches(_direct(real_cluster, tmp_path, **{"certificate-authority-data": None}))
    assert await _reaches(
        _direct(
            real_cluster, tmp_path, **{"certificate-authority-data": None, "insecure-skip-tls-verify": True}
        )
    )
