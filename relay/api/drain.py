"""Wiring for graceful stop: count every request, close connections while draining."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import CALLER, FIRST_BYTE_AT, IN_FLIGHT
from relay.drain import Holder, InFlight
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


def key_holder(request: web.Request) -> Holder:
    """Whose key the request came with: its answer, or its held poll, ends should that
    key be revoked."""
    caller = request[CALLER]
    return caller.client.id, caller.claims.key_version


@contextlib.contextmanager
def answered_before_restart(request: web.Request, answer: Answer) -> Iterator[None]:
    """An answer still awaited when the drain's deadline passes, before its response
    began, ends with a 503 its client can retry elsewhere, not a dropped connection;
    one whose client is revoked meanwhile (disabled, deleted, re-keyed) ends at once
    with the 401 its next request would get, and its provider request is closed.
    (A stream already under way ends with an error event of its own.)

    One already queued for commit is let finish: it is written, receipt and all, as
    it stood when queued, so its client must get exactly that answer (or, should the
    commit fail, the error saying so), not a 503 that would have it asked again."""
    task = asyncio.current_task()
    assert task is not None
    gave_up = False

    def give_up() -> None:
        nonlocal gave_up
        if FIRST_BYTE_AT not in request and not answer.recorded and not gave_up:
            gave_up = True
            task.cancel()

    in_flight = request.app[IN_FLIGHT]
    with (
        in_flight.watch(give_up) as deadline,
        in_flight.revocable(key_holder(request), give_up) as revoked,
    ):
        try:
            yield
        except asyncio.CancelledError:
            # Ours alone (the client may have left too): then it is relay's answer to give.
            if gave_up and task.uncancel() == 0:
                if revoked.error is not None:
                    raise revoked.error from None
                if deadline.is_set():
                    raise RestartingError() from None
            raise


def setup_drain(app: web.Application) -> None:
    app[IN_FLIGHT] = InFlight()
    app.middlewares.append(drain_middleware)
    app.on_response_prepare.append(_on_prepare)
