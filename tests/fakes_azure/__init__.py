"""HTTPS fakes of the Azure services the secrets sync talks to (Entra ID token endpoint, Key Vault).

They speak the real wire protocol closely enough that the real azure-identity
``WorkloadIdentityCredential`` and the real azure-keyvault-secrets ``SecretClient`` run against them
unmodified. Used by ``tests/secrets`` and ``bench/bench_secrets.py``.
"""

from tests.fakes_azure.entra import FakeEntra
from tests.fakes_azure.keyvault import FakeKeyVault, FakeVault
from tests.fakes_azure.loopback_dns import loopback_localhost_names
from tests.fakes_azure.pki import FakePki

__all__ = ["FakeEntra", "FakeKeyVault", "FakePki", "FakeVault", "loopback_localhost_names"]
