"""Kubeconfig and in-cluster settings, and the token re-read policy."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from choreo_dp.kube import config as kubeconfig
from choreo_dp.kube.errors import ConfigError


def _write(path: Path, user: dict[str, object], cluster: dict[str, object] | None = None) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://127.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_with_inline_client_cert_and_relative_token_file(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("t1\n")
    cfg = kubeconfig.from_kubeconfig(
        _write(
            tmp_path / "kc",
            {"tokenFile": "tok", "client-certificate-data": base64.b64encode(b"CERT").decode()},
            {
                "server": "https://127.0.0.1:6443/",
                "certificate-authority-data": base64.b64encode(b"CA").decode(),
            },
        )
    )
    assert cfg.server == "https://127.0.0.1:6443" and cfg.namespace == "team"
    assert cfg.ca_data == b"CA" and cfg.token_file == str(tmp_path / "tok")
    assert cfg.client_cert_file is not None and Path(cfg.client_cert_file).read_bytes() == b"CERT"
    assert cfg.current_token() == "t1"


def test_rotated_token_files_are_reread_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "tok"
    token.write_text("first")
    cfg = kubeconfig.ConnectionConfig(server="https://x", token_file=str(token))
    clock = [1000.0]
    monkeypatch.setattr(kubeconfig.time, "monotonic", lambda: clock[0])
    assert cfg.current_token() == "first"
    token.write_text("second")
    clock[0] += 30
    assert cfg.current_token() == "first"
    clock[0] += 31
    assert cfg.current_token() == "second"
    token.unlink()
    clock[0] += 61
    assert cfg.current_token() == "second"  # a missing file keeps the last good token


def test_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("current-context: nope\ncontexts: []\n")
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        kubeconfig.from_kubeconfig(tmp_path / "kc")


def test_in_cluster_needs_the_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="not running in a cluster"):
        kubeconfig.in_cluster()
