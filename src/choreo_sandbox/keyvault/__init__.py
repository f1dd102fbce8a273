"""A local Azure Key Vault for the sandbox and the tests: the secrets REST surface the real
azure-keyvault-secrets ``SecretClient`` uses and the Entra ID token endpoint of workload identity,
over TLS. One implementation, shared by ``choreo-dp sandbox`` (:mod:`.service`), ``tests/secrets``
and ``bench/bench_secrets.py``."""

from choreo_sandbox.keyvault.entra import EntraEmulator
from choreo_sandbox.keyvault.vault import EmulatedVault, KeyVaultEmulator, random_secret_value

__all__ = ["EmulatedVault", "EntraEmulator", "KeyVaultEmulator", "random_secret_value"]
