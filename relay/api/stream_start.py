"""The start of a streamed answer: its head sent, unless its client has just left."""

from __future__ import annotations

import aiohttp
from aiohttp import web


async def began(response: web.StreamResponse, request: web.Request) -> bool:
    """Send `response`'s head; False if the client left as its answer began: its
    connection is closing, and aiohttp's cancellation of the handler, which would
    record the answer cancelled, has not arrived yet. The caller records it so."""
    try:
        await response.prepare(request)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return False
    return True
