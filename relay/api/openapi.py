"""GET /openapi.json and GET /docs: the API described, and rendered from relay's own assets."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import orjson
from aiohttp import web

from relay.api.spec import build_spec
from relay.errors import NotFoundError

STATIC = Path(__file__).parent / "static"
ASSETS = {"docs.js": "text/javascript", "docs.css": "text/css"}
# The docs page runs its own script and fetches /openapi.json; nothing else.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_files: dict[str, bytes] = {}


@functools.cache
def spec_bytes() -> bytes:
    return orjson.dumps(build_spec())


async def _static(name: str) -> bytes:
    # Read once, off the loop; a few kilobytes kept for the life of the process.
    if name not in _files:
        _files[name] = await asyncio.to_thread((STATIC / name).read_bytes)
    return _files[name]


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(
        body=spec_bytes(), content_type="application/json", headers={"Cache-Control": "no-cache"}
    )


async def get_docs(request: web.Request) -> web.Response:
    return web.Response(
        body=await _static("docs.html"),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"},
    )


async def get_docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise NotFoundError("No such asset.", code="unknown_url")
    return web.Response(
        body=await _static(name),
        content_type=ASSETS[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
