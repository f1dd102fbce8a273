"""A throwaway CA (trustme) and one server certificate for every loopback name the fakes serve."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class FakePki:
    """A CA written to ``ca_path`` (what the SDK clients are told to trust) and server TLS contexts."""

    def __init__(self, directory: Path, hostnames: list[str]) -> None:
        self.ca = trustme.CA()
        # Explicit names, not ``*.localhost``: OpenSSL refuses a wildcard directly above a single label.
        self._cert = self.ca.issue_cert("localhost", "127.0.0.1", *hostnames)
        self.ca_path = directory / "fake-azure-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx
