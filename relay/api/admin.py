"""The admin API for API clients (the admin token is checked by access_control)."""

from __future__ import annotations

from aiohttp import web

from relay.api.body import json_response, query_int, query_value, read_json_object
from relay.api.client_object import client_json
from relay.appkeys import CLIENTS
from relay.errors import UnsupportedMediaTypeError

# A client's fields at their longest (a name of 200 characters, 64 scopes of 128, three
# limits) are some 10 KiB of JSON; metadata, 32 labels whose size relay does not cap,
# has the rest: over 1.5 KiB a label. Bodies past it are no client's fields.
ADMIN_BODY_BYTES = 64 * 1024


async def list_clients(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", default=20, low=1, high=100)
    page = await request.app[CLIENTS].list_page(limit=limit, after=query_value(request, "after"))
    clients = page.clients
    return json_response(
        {
            "object": "list",
            "data": [client_json(client) for client in clients],
            "first_id": clients[0].id if clients else None,
            "last_id": clients[-1].id if clients else None,
            "has_more": page.has_more,
            "next_cursor": page.next_cursor,
        }
    )


async def create_client(request: web.Request) -> web.Response:
    client, key = await request.app[CLIENTS].create(
        await read_json_object(request, ADMIN_BODY_BYTES)
    )
    location = request.app.router["get_client"].url_for(client_id=client.id)
    return json_response(
        client_json(client, key),
        status=201,
        headers={"Cache-Control": "no-store", "Location": str(location)},
    )


async def get_client(request: web.Request) -> web.Response:
    client = await request.app[CLIENTS].get(request.match_info["client_id"])
    return json_response(client_json(client))


async def update_client(request: web.Request) -> web.Response:
    try:
        data = await read_json_object(request, ADMIN_BODY_BYTES)
    except UnsupportedMediaTypeError as error:
        error.headers["Accept-Patch"] = "application/json"  # RFC 5789, 2.2
        raise
    client = await request.app[CLIENTS].update(request.match_info["client_id"], data)
    return json_response(client_json(client))


async def delete_client(request: web.Request) -> web.Response:
    client_id = await request.app[CLIENTS].delete(request.match_info["client_id"])
    return json_response({"object": "client.deleted", "id": client_id, "deleted": True})


async def regenerate_client_key(request: web.Request) -> web.Response:
    client, key = await request.app[CLIENTS].regenerate_key(request.match_info["client_id"])
    return json_response(client_json(client, key), headers={"Cache-Control": "no-store"})
