"""GET /v1/receipts/{id} and GET /v1/signature/{id}: one answer's proof, named by its
receipt id or its completion's id;
GET /admin/receipts: the whole chain, for whoever audits it."""

from __future__ import annotations

import orjson
from aiohttp import web

from relay.api.body import json_response, query_int, query_value
from relay.appkeys import CALLER, RECEIPTS


async def get_receipt(request: web.Request) -> web.Response:
    body = await request.app[RECEIPTS].receipt_body(
        request.match_info["receipt_id"], request[CALLER].client.id
    )
    # The stored canonical bytes as they are: re-encoding could change what was signed.
    return web.Response(body=body, content_type="application/json")


async def get_signature(request: web.Request) -> web.Response:
    signature = await request.app[RECEIPTS].near_signature(
        request.match_info["receipt_id"],
        request[CALLER].client.id,
        query_value(request, "signing_algo"),
    )
    return json_response(signature)


async def list_receipts(request: web.Request) -> web.Response:
    """A page of the receipt chain, in chain order, each receipt byte for byte as signed."""
    after = query_int(request, "after", default=0, low=0, high=2**63 - 1)
    limit = query_int(request, "limit", default=100, low=1, high=500)
    page, has_more = await request.app[RECEIPTS].chain_page(after, limit)
    # Spliced in as stored: re-encoding could change what was signed.
    # An empty page (the chain's end) leaves a follower where it was, not at null.
    tail = {"last_seq": page[-1][0] if page else after, "has_more": has_more}
    body = b"".join(
        (
            b'{"object":"list","data":[',
            b",".join(receipt for _, receipt in page),
            b"],",
            orjson.dumps(tail)[1:],
        )
    )
    return web.Response(body=body, content_type="application/json")
