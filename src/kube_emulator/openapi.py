"""OpenAPI endpoints, just enough for kubectl.

``/openapi/v2`` answers with an empty (valid) protobuf ``Document``: kubectl's
client-side validation then finds no schema for any kind and skips it, leaving
validation to this server.  ``/openapi/v3`` is 404 so clients fall back to v2.
"""

from __future__ import annotations

from aiohttp import web

from kube_emulator.errors import ApiFailure
from kube_emulator.resources import Registry

PB_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def respond(request: web.Request, reg: Registry, rest: list[str]) -> web.Response:
    if rest == ["v2"]:
        accept = request.headers.get("Accept", "")
        if "protobuf" in accept:
            return web.Response(body=b"", headers={"Content-Type": PB_V2})
        return web.json_response(
            {
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": {},
                "definitions": {},
            }
        )
    raise ApiFailure(404, "the server could not find the requested resource")
