"""What fake providers in tests answer with, written once."""

from __future__ import annotations

from aiohttp import web


async def sse_reply(request: web.Request, *parts: bytes, end: bool = True) -> web.StreamResponse:
    """A 200 event stream of `parts`, each written as it is; closed after them when `end`."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    if end:
        await response.write_eof()
    return response
