"""What the sandbox prints is what a new user pastes: the next steps run in a shell whose PATH lacks
the venv, the examples apply on top of the sandbox (their own Environment ``demo``; the sandbox's
``dev`` is left as it was), the Key Vault example becomes Ready from the sandbox's own vault, and
the printed ``keyvault set`` rotates a secret: the app's Secret and its pod template change.
On the emulated API and on a real cluster (the sandbox starts its own)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.api.vocabulary import SECRETS_HASH_ANNOTATION, app_secret_name
from choreo_dp.kube import resources as R
from choreo_sandbox.demo import ENV_SPEC, KUBE_MODES, Sandbox
from tests.polling import eventually

BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _next_steps(printed: str) -> list[str]:
    """The indented commands under ``Next``."""
    lines = printed.split("Next (paste into a shell; no venv needed):\n", 1)[1].splitlines()
    commands = []
    for line in lines:
        if not line.startswith("  "):
            break
        commands.append(line.strip())
    return commands


def _shell(script: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``bash -e`` with a new user's environment: no venv on PATH, nothing of ours exported."""
    env = {"PATH": BARE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-e", "-c", "\n".join(script)],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip


async def _payment_worker(sandbox: Sandbox) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    assert sandbox.kube is not None
    app = await sandbox.kube.get(R.CHOREOAPPS, "payment-worker", "choreo-demo")
    secret = await sandbox.kube.get(R.SECRETS, app_secret_name("payment-worker"), "choreo-demo")
    deployment = await sandbox.kube.get(R.DEPLOYMENTS, "payment-worker", "choreo-demo")
    return app or {}, secret or {}, deployment or {}


def _template_hash(deployment: dict[str, Any]) -> str | None:
    annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
    value = annotations.get(SECRETS_HASH_ANNOTATION)
    return value if isinstance(value, str) else None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kube", KUBE_MODES)
async def test_printed_next_steps_work_pasted_and_a_rotation_rolls_the_pods(
    kube: str, tmp_path: Path
) -> None:
    assert shutil.which("choreo-dp", path=BARE_PATH) is None, "the venv must not be on the bare PATH"
    lines: list[str] = []
    sandbox = Sandbox(tmp_path / "sb", say=lines.append, ready_timeout=120, kube_mode=kube)
    try:
        await sandbox.start()
        printed = sandbox.next_steps()
        steps = _next_steps(printed)
        rotate = [s for s in steps if " keyvault set " in s]
        assert len(rotate) == 1 and steps[-1] == rotate[0], printed
        assert any(" cp apply -f " in s and s.endswith("--wait") for s in steps), printed

        out = await asyncio.to_thread(_shell, steps[:-1], tmp_path)
        assert out.returncode == 0, f"{printed}\n---\n{out.stdout}\n{out.stderr}"
        # The examples went into their own Environment; the sandbox's dev is as the sandbox made it.
        assert "environment/demo created" in out.stdout, out.stdout
        assert "choreoapp/demo/payment-worker" in out.stdout, out.stdout
        assert sandbox.kube is not None
        dev = await sandbox.kube.get(R.ENVIRONMENTS, "dev")
        assert dev is not None and dev["spec"]["displayName"] == ENV_SPEC["displayName"]
        assert dev["spec"]["registry"] == ENV_SPEC["registry"]
        hello = await sandbox.kube.get(R.CHOREOAPPS, "hello", "choreo-dev")
        assert hello is not None and hello["status"]["phase"] == "Ready"

        # The Key Vault example reads the sandbox's vault (the pinned version too).
        async def synced() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
            app, secret, deployment = await _payment_worker(sandbox)
            ready = app.get("status", {}).get("phase") == "Ready" and secret and _template_hash(deployment)
            return (app, secret, deployment) if ready else None

        _, secret, deployment = await eventually(synced, "payment-worker Ready", timeout=60, interval=0.5)
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data == {"DB_PASSWORD": "sandbox-db-password-1", "PSP_API_KEY": "sandbox-psp-key-1"}
        before = _template_hash(deployment)

        out = await asyncio.to_thread(_shell, [steps[0], steps[1], rotate[0]], tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "secret 'payments-db-password' is now version" in out.stdout

        async def rotated() -> tuple[str, str | None] | None:
            _, secret, deployment = await _payment_worker(sandbox)
            value = base64.b64decode(secret.get("data", {}).get("DB_PASSWORD", "")).decode()
            after = _template_hash(deployment)
            return (value, after) if value == "rotated-1" and after not in (None, before) else None

        # The refresh interval of the sandbox's vault is 10 s; the first refresh comes in its second half.
        value, after = await eventually(rotated, "the rotation reaching the pods", timeout=60, interval=0.5)
        assert after != before and value == "rotated-1"
        assert not any("Traceback" in line for line in lines)
    finally:
        await sandbox.stop()
    assert sandbox.children.pids == {}
    assert "keyvault.json" in os.listdir(tmp_path / "sb")
