"""kopf's login through the project's kubeconfig loader: an exec-only user works for kopf too."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from choreo_dp.kube.config import from_kubeconfig
from choreo_dp.operator.login import KopfLogin
from tests.operator.exec_login import PLUGIN, plugin_runs


def kubeconfig(tmp: Path, tokens: list[str], expires: datetime | None) -> Path:
    (tmp / "tokens").write_text("\n".join(tokens))
    env = {"FAKE_EXEC_COUNT": str(tmp / "count"), "FAKE_EXEC_TOKENS": str(tmp / "tokens")}
    if expires is not None:
        env["FAKE_EXEC_EXPIRES"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "proxy-url": "http://proxy:3128"}}
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(PLUGIN)],
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                    }
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "current-context": "x",
    }
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_kopf_gets_the_exec_plugins_token_its_expiry_and_a_fresh_one_on_relogin(tmp_path: Path) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    login = KopfLogin(from_kubeconfig(kubeconfig(tmp_path, ["first", "second"], expires)))

    info = await login()

    assert (info.server, info.token, info.scheme) == ("https://127.0.0.1:1", "first", "Bearer")
    assert info.expiration == expires and info.proxy_url == "http://proxy:3128"
    assert info.default_namespace == "ns" and plugin_runs(tmp_path) == 1
    # kopf logs in again only when the credential it has was refused (401) or expired.
    again = await login()
    assert again.token == "second" and plugin_runs(tmp_path) == 2


async def test_a_token_user_still_logs_in_as_before(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "static"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    info = await KopfLogin(from_kubeconfig(path))()
    assert (info.token, info.expiration, info.certificate_path) == ("static", None, None)
