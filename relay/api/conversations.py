"""GET /v1/conversations, GET and DELETE /v1/conversations/{conversation_id}."""

from __future__ import annotations

from aiohttp import web

from relay.api.body import json_response, query_int, query_value
from relay.appkeys import CALLER, HISTORY, SETTINGS
from relay.services.conversation_ids import answer_horizon_s


async def list_conversations(request: web.Request) -> web.Response:
    page = await request.app[HISTORY].list_conversations(
        request[CALLER].client.id,
        after=query_value(request, "after") or None,
        limit=query_int(request, "limit", default=20, low=1, high=100),
    )
    return json_response(page.as_json())


async def get_conversation(request: web.Request) -> web.Response:
    conversation = await request.app[HISTORY].get_conversation(
        request[CALLER].client.id, request.match_info["conversation_id"]
    )
    return json_response(conversation)


async def delete_conversation(request: web.Request) -> web.Response:
    await request.app[HISTORY].delete_conversation(
        request[CALLER].client.id,
        request.match_info["conversation_id"],
        horizon_s=answer_horizon_s(request.app[SETTINGS]),
    )
    return web.Response(status=204)
