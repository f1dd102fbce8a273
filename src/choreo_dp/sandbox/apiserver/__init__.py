"""Emulated Kubernetes API server for tests and the sandbox.

Public API: ``ApiServer`` (async context manager), ``ApiServerThread`` (the same on a
background thread, for synchronous clients), ``serve_forever`` (the CLI loop).
"""

from choreo_dp.sandbox.apiserver.server import ApiServer, ApiServerThread, serve_forever

__all__ = ["ApiServer", "ApiServerThread", "serve_forever"]
