"""/docs and /redoc work without the internet: every asset they name is served by the control plane."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer

# src= and href= attributes, and url: '...' / spec-url="..." style references in inline scripts
_REFERENCE = re.compile(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)["']""")
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


def _references(html: str) -> list[str]:
    return _REFERENCE.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_everything_from_the_control_plane(
    server: ControlPlaneServer, page: str
) -> None:
    # No Authorization header: the pages are public, as FastAPI's are.
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        refs = _references(html)
        scripts = [r for r in refs if r.endswith(".js")]
        assert scripts, f"{page} names no script: {html[:500]}"
        ours = urlsplit(server.url).netloc
        foreign = [r for r in refs if urlsplit(urljoin(server.url + page, r)).netloc != ours]
        assert not foreign, f"{page} loads assets from other hosts: {foreign}"
        assert not re.search(r"https?://(?!127\.0\.0\.1)", html), "an absolute URL of another host"
        for ref in refs:
            asset = await client.get(urljoin(page, ref))
            assert asset.status_code == 200, f"{ref}: {asset.status_code}"
            suffix = "." + ref.rsplit(".", 1)[-1]
            assert asset.headers["content-type"].startswith(_TYPES[suffix]), (ref, asset.headers)
            assert asset.content


async def test_the_vendored_bundles_are_the_real_libraries(server: ControlPlaneServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        swagger = await client.get("/docs-assets/swagger-ui-bundle.js")
        redoc = await client.get("/docs-assets/redoc.standalone.js")
        css = await client.get("/docs-assets/swagger-ui.css")
    assert "SwaggerUIBundle" in swagger.text and len(swagger.content) > 500_000
    assert "Redoc" in redoc.text and len(redoc.content) > 500_000
    assert ".swagger-ui" in css.text


async def test_openapi_document_is_still_served(server: ControlPlaneServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        doc = (await client.get("/openapi.json")).json()
    assert "/docs" not in doc["paths"] and "/redoc" not in doc["paths"]
    assert not any(p.startswith("/docs-assets") for p in doc["paths"])
