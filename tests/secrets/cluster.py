"""Test helpers around a Kubernetes API: create Environments/ChoreoApps, read back Secrets and Events."""

from __future__ import annotations

import base64
from typing import Any, Protocol

from choreo_dp.api import Environment
from choreo_dp.kube import resources as R
from tests import polling


class KubeLike(Protocol):
    async def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None: ...
    async def create(
        self, res: Any, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]: ...
    async def delete(self, res: Any, name: str, namespace: str | None = None) -> bool: ...


def environment(
    name: str,
    vault_url: str | None,
    *,
    refresh: str = "1h",
    client_id: str | None = None,
    tenant_id: str | None = None,
    namespace: str | None = None,
) -> Environment:
    spec: dict[str, Any] = {"namespace": namespace or f"choreo-{name}"}
    if vault_url is not None:
        kv: dict[str, Any] = {"url": vault_url, "refreshInterval": refresh}
        if client_id:
            kv["clientId"] = client_id
        if tenant_id:
            kv["tenantId"] = tenant_id
        spec["keyVault"] = kv
    return Environment.model_validate(
        {"apiVersion": "choreo.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name}, "spec": spec}
    )


def app_body(
    env: Environment, name: str, secrets: list[dict[str, str]], project: str = "shop"
) -> dict[str, Any]:
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": env.target_namespace},
        "spec": {
            "environment": env.metadata.name,
            "project": project,
            "type": "service",
            "image": "registry.example/shop/api:1",
            "secrets": secrets,
        },
    }


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


eventually = polling.eventually  # the suite's one polling helper


async def ensure_namespace(kube: KubeLike, name: str) -> None:
    if await kube.get(R.NAMESPACES, name) is None:
        await kube.create(R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
