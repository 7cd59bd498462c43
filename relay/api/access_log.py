"""One log line per request: ids, route, status, sizes and timings — never content.

`status` is the one sent (or 499, nothing sent, when the client hung up first);
`client_left` says the client hung up before the whole response was written, so a
streamed answer the client left halfway is not mistaken for one delivered.

`bytes_out` is every byte relay wrote for the response: its status line, headers and
body as framed (a stream's chunk sizes too), as aiohttp's writer counts them. That is
nginx's $bytes_sent (and aiohttp's own %b), not $body_bytes_sent: aiohttp keeps only
that total, and a separate body count would cost a call on every write of every stream.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import CALLER, FIRST_BYTE_AT, PREPARED, REQUEST_ID, STARTED_AT
from relay.metrics import observe_request

log = logging.getLogger("relay.access")
CLIENT_CLOSED_REQUEST = 499


def route_of(request: web.Request) -> str:
    """The route pattern (`/admin/clients/{client_id}`), not the path with its values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED_AT] = started = time.monotonic()
    status = 500
    client_left = False  # before the whole response was written: a status is not a delivery
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            client_left = not await _send_whole(request, response)
        return response
    except web.HTTPException as exc:  # a redirect or 204 (relay's error mapping maps the rest)
        status = exc.status
        client_left = not await _send_whole(request, exc)
        raise
    except asyncio.CancelledError:
        # The client hung up (aiohttp cancels its handler): no server error. Logged with
        # the status it was sent, or, sent nothing, nginx's 499 "client closed request".
        prepared = request.get(PREPARED)
        status = prepared.status if prepared is not None else CLIENT_CLOSED_REQUEST
        client_left = True
        raise
    finally:
        now = time.monotonic()
        first_byte = request.get(FIRST_BYTE_AT)
        sent = request.writer.output_size  # what was written, if the client left too
        caller = request.get(CALLER)
        route = route_of(request)
        observe_request(route, request.method, status, now - started)
        log.info(
            "request",
            extra={
                "request_id": request.get(REQUEST_ID),
                "client_id": caller.client.id if caller else None,
                "method": request.method,
                "route": route,
                "status": status,
                "client_left": client_left,
                "bytes_in": request.content.total_bytes,  # the body as received, chunked too
                "bytes_out": sent,
                "ttfb_ms": round((first_byte - started) * 1000, 2) if first_byte else None,
                "duration_ms": round((now - started) * 1000, 2),
            },
        )


async def _send_whole(request: web.Request, response: web.StreamResponse) -> bool:
    """Send a whole answer here rather than after the middlewares, as aiohttp would: its
    line, and the request's duration, then cover writing it, and count what was. False
    if the client left before it was written."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return False  # aiohttp's own attempt to finish the response finds so too
    return True


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request[FIRST_BYTE_AT] = time.monotonic()
    request[PREPARED] = response


def setup_access_log(app: web.Application) -> None:
    app.middlewares.append(access_log_middleware)
    app.on_response_prepare.append(_on_prepare)
