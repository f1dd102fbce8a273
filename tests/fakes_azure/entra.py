"""Re-export: the Entra ID token endpoint lives in :mod:`choreo_sandbox.keyvault.entra`."""

from choreo_sandbox.keyvault.entra import JWT_BEARER, IssuedToken, TokenRequest
from choreo_sandbox.keyvault.entra import EntraEmulator as FakeEntra

__all__ = ["JWT_BEARER", "FakeEntra", "IssuedToken", "TokenRequest"]
