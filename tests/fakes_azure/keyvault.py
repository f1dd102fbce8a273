"""Re-export: the Key Vault emulator lives in :mod:`choreo_sandbox.keyvault.vault`."""

from choreo_sandbox.keyvault.vault import THROTTLE_GRACE, SecretVersion, random_secret_value
from choreo_sandbox.keyvault.vault import EmulatedVault as FakeVault
from choreo_sandbox.keyvault.vault import KeyVaultEmulator as FakeKeyVault

__all__ = ["THROTTLE_GRACE", "FakeKeyVault", "FakeVault", "SecretVersion", "random_secret_value"]
