"""HTTPS emulators of the Azure services the secrets sync talks to (Entra ID token endpoint, Key Vault).

The implementation lives in :mod:`choreo_sandbox.keyvault` (the sandbox runs it too); this package
keeps the names the tests and ``bench/bench_secrets.py`` use, plus what only tests need: a trustme
CA (:mod:`.pki`) and ``<vault>.localhost`` name resolution (:mod:`.loopback_dns`).
"""

from tests.fakes_azure.entra import FakeEntra
from tests.fakes_azure.keyvault import FakeKeyVault, FakeVault
from tests.fakes_azure.loopback_dns import loopback_localhost_names
from tests.fakes_azure.pki import FakePki

__all__ = ["FakeEntra", "FakeKeyVault", "FakePki", "FakeVault", "loopback_localhost_names"]
