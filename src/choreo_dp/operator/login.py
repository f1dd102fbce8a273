"""kopf's own login from the project's kubeconfig loader (``choreo_dp.kube.config``).

kopf's built-in login reads kubeconfigs itself and knows no ``exec`` credential plugin (how AKS
users log in, via kubelogin), nor several ``KUBECONFIG`` files merged. The operator's own client
already reads all of that; kopf's watches get the same connection, with the plugin's credential
(run when there is none or it has expired) and its expiry, so kopf logs in again before it lapses
and after a 401.

``tls-server-name`` has no counterpart in ``kopf.ConnectionInfo``: with it kopf verifies the
server's certificate against the host of ``server``, as clients without that setting do.
"""

from __future__ import annotations

from datetime import UTC, datetime

import kopf

from choreo_dp.kube.config import ConnectionConfig
from choreo_dp.kube.execauth import ExecCredential


class KopfLogin:
    """The ``@kopf.on.login`` handler's body. kopf calls it at start, and again when the
    credential it got has expired or been refused (401): a credential handed to kopf is then
    not handed out again, so the plugin runs anew."""

    def __init__(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        self._given: ExecCredential | None = None

    async def __call__(self) -> kopf.ConnectionInfo:
        auth = self.conn.exec_auth
        if auth is not None and self._given is not None:
            auth.invalidate(self._given)
        info, self._given = await connection_info(self.conn)
        return info


async def connection_info(conn: ConnectionConfig) -> tuple[kopf.ConnectionInfo, ExecCredential | None]:
    """kopf's connection for ``conn``, and the exec plugin's credential it carries (if any)."""
    credential: ExecCredential | None = None
    if conn.exec_auth is not None:
        credential = await conn.exec_auth.credential()
    token = credential.token if credential is not None else conn.current_token()
    cert_data = key_data = None
    cert_path, key_path = conn.client_cert_file, conn.client_key_file
    if credential is not None and credential.client_certificate_data and credential.client_key_data:
        cert_data, key_data = credential.client_certificate_data, credential.client_key_data
        cert_path = key_path = None
    expires = (
        datetime.fromtimestamp(credential.expires_at, UTC)
        if credential is not None and credential.expires_at is not None
        else None
    )
    info = kopf.ConnectionInfo(
        server=conn.server,
        token=token,
        scheme="Bearer" if token else None,
        ca_path=conn.ca_file,
        ca_data=conn.ca_data if not conn.ca_file else None,
        insecure=conn.insecure or None,
        certificate_path=cert_path,
        certificate_data=cert_data,
        private_key_path=key_path,
        private_key_data=key_data,
        default_namespace=conn.namespace,
        proxy_url=conn.proxy_url,
        expiration=expires,
    )
    return info, credential
