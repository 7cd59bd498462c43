"""GET /v1/history (cursor pages, long-poll) and GET /v1/history/search."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from relay.api.body import json_response, query_int, query_value
from relay.api.drain import key_holder
from relay.appkeys import CALLER, HISTORY, IN_FLIGHT
from relay.errors import InvalidRequestError

MAX_WAIT_S = 30.0
# Seconds as written in a URL: float() also reads "1_0", "1e1", "inf" and other
# scripts' digits, which a proxy or cache reading the query would not.
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{0,6})?|\.[0-9]{1,6}")


def _wait_seconds(request: web.Request) -> float:
    raw = query_value(request, "wait")
    if not raw:
        return 0.0
    if not _SECONDS.fullmatch(raw):
        raise InvalidRequestError("wait must be a number of seconds.", param="wait")
    wait = float(raw)
    if not wait <= MAX_WAIT_S:
        raise InvalidRequestError(f"wait must be between 0 and {MAX_WAIT_S:g}.", param="wait")
    return wait


def _conversation_filter(request: web.Request) -> str | None:
    """The conversation a read is narrowed to, or None for all. Given empty (a URL built
    from an unset variable), it is refused rather than read as absent: that would
    answer with every conversation where the client asked for one."""
    conversation_id = query_value(request, "conversation_id")
    if conversation_id == "":
        raise InvalidRequestError(
            "conversation_id is empty: name a conversation, or leave it out for all of them.",
            param="conversation_id",
        )
    return conversation_id


async def list_history(request: web.Request) -> web.Response:
    caller = request[CALLER]
    in_flight = request.app[IN_FLIGHT]
    wait = _wait_seconds(request)
    revoked = asyncio.Event()
    # Held polls end early: all of them at once on a graceful stop, and a revoked
    # client's with its 401.
    with in_flight.revocable(key_holder(request) if wait else None, revoked.set) as stop:
        page = await request.app[HISTORY].page(
            caller.client.id,
            after=query_value(request, "after") or None,
            limit=query_int(request, "limit", default=100, low=1, high=500),
            conversation_id=_conversation_filter(request),
            wait=wait,
            stops=(in_flight.draining, revoked),
        )
    if stop.error is not None:
        raise stop.error
    return json_response(page.as_json())


async def search_history(request: web.Request) -> web.Response:
    results, more = await request.app[HISTORY].search(
        request[CALLER].client.id,
        query_value(request, "q") or "",
        limit=query_int(request, "limit", default=20, low=1, high=100),
        conversation_id=_conversation_filter(request),
    )
    return json_response({"object": "list", "data": results, "has_more": more})
