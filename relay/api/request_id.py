"""X-Request-Id: kept from the client when sane, made up otherwise, echoed on the response."""

from __future__ import annotations

import os
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import REQUEST_ID
from relay.logs import served, serving

HEADER = "X-Request-Id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(HEADER, "")
    # 128 random bits as 32 hex digits: the shape of a uuid4's hex, a quarter of its cost.
    request_id = given if _SANE.fullmatch(given) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    mark = serving(request_id)  # every line this request's task logs names it
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[HEADER] = request_id
        raise
    finally:
        served(mark)
    if not response.prepared:
        response.headers[HEADER] = request_id
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streams are prepared inside the handler, before the middleware sees them.
    if REQUEST_ID in request:
        response.headers.setdefault(HEADER, request[REQUEST_ID])


def setup_request_id(app: web.Application) -> None:
    app.middlewares.append(request_id_middleware)
    app.on_response_prepare.append(_on_prepare)
