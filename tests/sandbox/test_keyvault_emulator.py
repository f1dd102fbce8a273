"""The sandbox's Key Vault as the operator meets it: the real ``WorkloadIdentityCredential`` and
``SecretClient`` over TLS against ``sandbox keyvault serve`` (a child process, as in the sandbox),
with no resolver set-up; rotation through ``choreo-dp sandbox keyvault set``, kept across a restart.
No Kubernetes here (the sandbox tests run the operator against it on both API servers)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import WorkloadIdentityCredential
from azure.keyvault.secrets.aio import SecretClient

from choreo_sandbox.children import free_port
from choreo_sandbox.keyvault import service
from tests.polling import eventually


def _cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", *argv],
        capture_output=True, text=True, timeout=60, input=stdin, check=False,
    )  # fmt: skip


class Served:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.vault_port, self.entra_port = free_port(), free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = (self.directory / "keyvault.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "keyvault", "serve",
            "--dir", str(self.directory),
            "--vault-port", str(self.vault_port), "--entra-port", str(self.entra_port),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        log.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log()
            return "listening on" in self.log()

        await eventually(listening, "the Key Vault listening", timeout=20)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)

    def log(self) -> str:
        return (self.directory / "keyvault.log").read_text(errors="replace")

    def client(self, token_file: Path) -> tuple[SecretClient, WorkloadIdentityCredential]:
        """What the operator builds, given the environment ``operator_env`` hands it."""
        env = service.operator_env(self.directory, self.vault_port, self.entra_port)
        ca = env["SSL_CERT_FILE"]
        credential = WorkloadIdentityCredential(
            tenant_id=env["AZURE_TENANT_ID"], client_id=env["AZURE_CLIENT_ID"],
            token_file_path=str(token_file), authority=env["AZURE_AUTHORITY_HOST"], connection_verify=ca,
        )  # fmt: skip
        client = SecretClient(env["CHOREO_DP_DEFAULT_KEYVAULT_URL"], credential, connection_verify=ca)
        return client, credential


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _read(served: Served, name: str, version: str | None = None, token: Path | None = None) -> str:
    client, credential = served.client(token or service.KeyVaultFiles(served.directory).identity_token)
    async with client, credential:
        secret = await client.get_secret(name, version)
        assert secret.value is not None
        return secret.value


async def test_the_real_sdk_reads_the_demo_secrets_with_workload_identity(served: Served) -> None:
    for name, (value, version) in service.DEMO_SECRETS.items():
        assert await _read(served, name) == value
        if version is not None:
            assert await _read(served, name, version) == value


async def test_an_identity_token_the_vault_does_not_trust_is_refused(served: Served, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger-token"
    stranger.write_text("not-the-service-account-token")
    with pytest.raises(ClientAuthenticationError):
        await _read(served, "greeting", token=stranger)


async def test_keyvault_set_rotates_and_a_restart_keeps_the_versions(served: Served) -> None:
    before = json.loads((served.directory / "keyvault.json").read_text())["secrets"]["payments-db-password"]
    out = await asyncio.to_thread(
        _cli, "sandbox", "--dir", str(served.directory), "keyvault", "set", "payments-db-password", "-",
        stdin="rotated-value\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("secret 'payments-db-password' is now version "), out.stdout
    version = out.stdout.split("version ")[1].split(";")[0]
    assert await _read(served, "payments-db-password") == "rotated-value"
    # The earlier version stays readable by its id, as in Key Vault.
    assert await _read(served, "payments-db-password", before[-1]["version"]) == before[-1]["value"]

    await served.stop()
    await served.start()
    assert await _read(served, "payments-db-password") == "rotated-value"
    assert await _read(served, "payments-db-password", version) == "rotated-value"


async def test_the_admin_endpoint_needs_the_token_file(served: Served) -> None:
    token = service.KeyVaultFiles(served.directory).admin_token
    token.write_text("guessed")
    out = await asyncio.to_thread(
        _cli, "sandbox", "--dir", str(served.directory), "keyvault", "set", "greeting", "x"
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "choreo-dp: error: the sandbox's Key Vault refused: 401 the sandbox's Key Vault admin token is required"
    ]
    assert await _read(served, "greeting") == service.DEMO_SECRETS["greeting"][0]


def test_keyvault_set_without_a_running_sandbox_is_one_line(tmp_path: Path) -> None:
    out = _cli("sandbox", "--dir", str(tmp_path / "none"), "keyvault", "set", "greeting", "x")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"choreo-dp: error: no sandbox Key Vault is running in {tmp_path / 'none'} "
        f"(start one with: choreo-dp sandbox --dir {tmp_path / 'none'})"
    ]
    bad = _cli("sandbox", "--dir", str(tmp_path), "keyvault", "set", "no_underscores", "x")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "invalid secret name" in bad.stderr
    assert "Traceback" not in out.stderr + bad.stderr
    assert os.listdir(tmp_path) == []
