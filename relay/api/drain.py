"""Wiring for graceful stop: count every request, close connections while draining."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import IN_FLIGHT
from relay.drain import InFlight


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    with request.app[IN_FLIGHT].request():
        return await handler(request)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # While draining, answers still arrive on kept-alive connections (a load
    # balancer's pool): close each after its answer so the next goes elsewhere.
    if request.app[IN_FLIGHT].draining.is_set():
        # Headers are already built when this hook runs: say it, then do it.
        response.headers["Connection"] = "close"
        response.force_close()


def setup_drain(app: web.Application) -> None:
    app[IN_FLIGHT] = InFlight()
    app.middlewares.append(drain_middleware)
    app.on_response_prepare.append(_on_prepare)
