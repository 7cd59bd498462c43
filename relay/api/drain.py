"""Wiring for graceful stop: count every request, close connections while draining."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import FIRST_BYTE_AT, IN_FLIGHT
from relay.drain import InFlight
from relay.errors import RestartingError
from relay.services.answers import Answer


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


@contextlib.contextmanager
def answered_before_restart(request: web.Request, answer: Answer) -> Iterator[None]:
    """An answer still awaited when the drain's deadline passes, before its response
    began, ends with a 503 its client can retry elsewhere, not a dropped connection.
    (A stream already under way ends with an error event of its own.)

    One already queued for commit is let finish: it is written, receipt and all, as
    it stood when queued, so its client must get exactly that answer (or, should the
    commit fail, the error saying so), not a 503 that would have it asked again."""
    task = asyncio.current_task()
    assert task is not None

    def give_up() -> None:
        if FIRST_BYTE_AT not in request and not answer.recorded:
            task.cancel()

    with request.app[IN_FLIGHT].watch(give_up) as deadline:
        try:
            yield
        except asyncio.CancelledError:
            # Ours alone (the client may have left too): then it is relay's answer to give.
            if deadline.is_set() and FIRST_BYTE_AT not in request and task.uncancel() == 0:
                raise RestartingError() from None
            raise


def setup_drain(app: web.Application) -> None:
    app[IN_FLIGHT] = InFlight()
    app.middlewares.append(drain_middleware)
    app.on_response_prepare.append(_on_prepare)
