"""One log line per request: ids, route, status, sizes and timings — never content."""

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
    status, sent = 500, 0
    try:
        response = await handler(request)
        status = response.status
        sent = (
            response.body_length
            if response.prepared
            else len(getattr(response, "body", b"") or b"")
        )
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The client hung up (aiohttp cancels its handler): no server error. Logged with
        # the status it was sent, or, sent nothing, nginx's 499 "client closed request".
        prepared = request.get(PREPARED)
        status = prepared.status if prepared is not None else CLIENT_CLOSED_REQUEST
        raise
    finally:
        now = time.monotonic()
        first_byte = request.get(FIRST_BYTE_AT)
        if first_byte is None and status != CLIENT_CLOSED_REQUEST:
            first_byte = now  # a whole answer: its head goes out as soon as it is returned
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
                "bytes_in": request.content_length or 0,
                "bytes_out": sent,
                "ttfb_ms": round((first_byte - started) * 1000, 2) if first_byte else None,
                "duration_ms": round((now - started) * 1000, 2),
            },
        )


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request[FIRST_BYTE_AT] = time.monotonic()
    request[PREPARED] = response


def setup_access_log(app: web.Application) -> None:
    app.middlewares.append(access_log_middleware)
    app.on_response_prepare.append(_on_prepare)
