"""GET /v1/receipts/{receipt_id} and GET /v1/signature/{receipt_id}: one answer's proof."""

from __future__ import annotations

from aiohttp import web

from relay.api.body import json_response
from relay.appkeys import CALLER, RECEIPTS


async def get_receipt(request: web.Request) -> web.Response:
    body = await request.app[RECEIPTS].receipt_body(
        request.match_info["receipt_id"], request[CALLER].client.id
    )
    # The stored canonical bytes as they are: re-encoding could change what was signed.
    return web.Response(body=body, content_type="application/json")


async def get_signature(request: web.Request) -> web.Response:
    signature = await request.app[RECEIPTS].near_signature(
        request.match_info["receipt_id"], request[CALLER].client.id
    )
    return json_response(signature)
