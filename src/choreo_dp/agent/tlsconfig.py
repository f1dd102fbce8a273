"""TLS for the tunnel: CA pinning and the optional mTLS client certificate."""

from __future__ import annotations

import asyncio
import ssl


def _build(ca_file: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    # With cafile given, create_default_context loads ONLY that CA (no system store): pinning.
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


async def client_context(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """Reads certificate files off the event loop."""
    return await asyncio.to_thread(_build, ca_file, client_cert, client_key)
