"""TLS for the tunnel: CA pinning and the optional mTLS client certificate."""

from __future__ import annotations

import asyncio
import contextlib
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


def _describe(der: bytes) -> str | None:
    try:
        from cryptography import x509
    except ImportError:  # a transitive dependency (azure-identity): its absence only costs detail
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    signed = " (self-signed)" if subject == issuer else ""
    return (
        f"subject {subject or '(empty)'}, issuer {issuer or '(empty)'}{signed}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    )


async def describe_server_certificate(
    host: str, port: int, server_name: str, timeout: float = 5.0
) -> str | None:
    """Subject and issuer of the certificate a server presents, read without verifying it.

    ``ssl`` says why verification failed but not of which certificate; the issuer is what tells an
    operator which CA ``--ca-file`` must hold. Only for a log line: nothing is sent on this connection.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name)
    except (OSError, TimeoutError):
        return None
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if isinstance(obj, ssl.SSLObject) else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    return _describe(der) if der else None
