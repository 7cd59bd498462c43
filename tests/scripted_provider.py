"""A fake provider's stream played from a script: its bytes, pauses and hang-ups in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

HANG = "hang"  # the provider sends nothing more and keeps its body open


async def play(
    request: web.Request, script: Sequence[bytes | float | str], ended: asyncio.Event
) -> web.StreamResponse:
    """`script` as the provider's event stream: bytes are written, a float is a pause of
    that many seconds, and a HANG holds the body open until `ended`."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for step in script:
        if step == HANG:
            await ended.wait()
            return response
        if isinstance(step, float):
            await asyncio.sleep(step)
        elif isinstance(step, bytes):
            await response.write(step)
    await response.write_eof()
    return response


def sent(script: Sequence[bytes | float | str]) -> bytes:
    """The bytes `script` sends."""
    return b"".join(step for step in script if isinstance(step, bytes))
