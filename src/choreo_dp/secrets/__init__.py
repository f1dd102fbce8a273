"""Key Vault secret injection: credentials, cached and deduplicated reads, the per-app Kubernetes Secret."""

from choreo_dp.secrets.clients import TransportSettings
from choreo_dp.secrets.errors import SecretFetchError
from choreo_dp.secrets.syncer import CONDITION_TYPE, SecretSyncer, SecretSyncResult

__all__ = ["CONDITION_TYPE", "SecretFetchError", "SecretSyncResult", "SecretSyncer", "TransportSettings"]
