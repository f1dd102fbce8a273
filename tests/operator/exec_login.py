"""A kubeconfig whose user is only an ``exec`` credential plugin, made from a working kubeconfig.

The plugin (tests/kube/fake_exec_plugin.py) hands out what the source kubeconfig's user had: its
client certificate (the real cluster's fault proxy admits by certificate) or its token (the
emulator), so the API admits the result exactly as it admits the source.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import yaml

PLUGIN = Path(__file__).resolve().parents[1] / "kube" / "fake_exec_plugin.py"


def exec_only_kubeconfig(source: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(source.read_text())
    ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
    entry = next(u for u in doc["users"] if u["name"] == ctx["user"])
    user = entry["user"]
    env = {"FAKE_EXEC_COUNT": str(directory / "count")}
    if user.get("client-certificate-data"):
        cert, key = directory / "client.crt", directory / "client.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        env.update(FAKE_EXEC_CERT=str(cert), FAKE_EXEC_KEY=str(key))
    else:
        (directory / "tokens").write_text(str(user["token"]))
        env["FAKE_EXEC_TOKENS"] = str(directory / "tokens")
    entry["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
        }
    }
    path = directory / "exec-only.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def plugin_runs(directory: Path) -> int:
    counter = directory / "count"
    return int(counter.read_text()) if counter.exists() else 0
