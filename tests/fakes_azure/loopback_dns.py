"""Resolve ``<name>.localhost`` to 127.0.0.1, as RFC 6761 says resolvers should (systemd-resolved does).

The container's resolver (``files dns``) does not, and the fake vaults need distinct host names of the
form ``kv-dev.localhost`` so that Key Vault's challenge-resource check (the request host must be a
subdomain of the challenge's resource) runs unmodified. aiohttp's default ``ThreadedResolver`` calls
``socket.getaddrinfo``, so wrapping that is enough; every other name goes to the real resolver.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def loopback_localhost_names() -> Iterator[None]:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.lower().endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real
