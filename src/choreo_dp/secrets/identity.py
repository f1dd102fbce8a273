"""Which Entra identity reads a vault, and the azure-identity credential for it.

On AKS the workload identity webhook injects AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and
AZURE_TENANT_ID into the operator pod. An Environment may name another app registration
(``keyVault.clientId``/``tenantId``) whose federated credential also trusts the operator's service
account token: that is a different identity, so it gets its own credential.
Without the token file we fall back to DefaultAzureCredential restricted to the credentials that make
sense in a server (environment service principal, workload identity, managed identity): never a
developer's CLI login, VS Code, PowerShell or the shared token cache, which would silently make the
operator act as whoever ran it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential, WorkloadIdentityCredential

from choreo_dp.api import Environment

FEDERATED_TOKEN_FILE = "AZURE_FEDERATED_TOKEN_FILE"
CLIENT_ID = "AZURE_CLIENT_ID"
TENANT_ID = "AZURE_TENANT_ID"


@dataclass(frozen=True, order=True)
class Identity:
    """``None`` fields mean "the pod's default" (from the environment variables)."""

    tenant_id: str | None = None
    client_id: str | None = None

    def describe(self) -> str:
        return f"client {self.client_id or 'default'} in tenant {self.tenant_id or 'default'}"


def identity_for(env: Environment) -> Identity:
    kv = env.spec.key_vault
    if kv is None:
        return Identity()
    return Identity(tenant_id=kv.tenant_id or None, client_id=kv.client_id or None)


def build_credential(
    identity: Identity,
    *,
    environ: Mapping[str, str] | None = None,
    transport_options: Mapping[str, Any] | None = None,
) -> AsyncTokenCredential:
    """A new credential for ``identity``; the caller owns it and must ``close()`` it."""
    env = os.environ if environ is None else environ
    options = dict(transport_options or {})
    token_file = env.get(FEDERATED_TOKEN_FILE)
    tenant_id = identity.tenant_id or env.get(TENANT_ID)
    client_id = identity.client_id or env.get(CLIENT_ID)
    if token_file and tenant_id and client_id:
        return WorkloadIdentityCredential(
            tenant_id=tenant_id, client_id=client_id, token_file_path=token_file, **options
        )
    return DefaultAzureCredential(
        managed_identity_client_id=client_id,
        workload_identity_client_id=client_id,
        workload_identity_tenant_id=tenant_id,
        exclude_cli_credential=True,
        exclude_developer_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
        **options,
    )
