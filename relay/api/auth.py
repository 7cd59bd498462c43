"""The token exchange and the caller's view of itself."""

from __future__ import annotations

import time

from aiohttp import web

from relay.api.body import json_response, read_json_object
from relay.appkeys import AUTHENTICATOR, CALLER
from relay.errors import InvalidRequestError
from relay.services.auth import Caller

# RFC 6749 §5.1: responses carrying tokens must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# The body carries an API key (68 characters): anyone may send one, so relay holds no
# more than this of it, whitespace and an extra field or two included.
TOKEN_BODY_BYTES = 4096


async def create_token(request: web.Request) -> web.Response:
    data = await read_json_object(request, TOKEN_BODY_BYTES)
    api_key = data.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise InvalidRequestError("api_key is required.", param="api_key")
    if api_key != api_key.strip():  # pasted with a newline, say: no key relay issues has one
        raise InvalidRequestError(
            "api_key begins or ends with whitespace; send the key exactly as it was issued.",
            param="api_key",
        )
    client, issued = await request.app[AUTHENTICATOR].exchange(api_key)
    request[CALLER] = Caller(client, issued.claims)  # so the access line names the client
    return json_response(issued.as_json(), headers=_NO_STORE)


async def get_me(request: web.Request) -> web.Response:
    caller = request[CALLER]
    return json_response(
        {
            "object": "client",
            "id": caller.client.id,
            "name": caller.client.name,
            "scopes": list(caller.client.scopes),
            "token_expires_at": caller.claims.expires_at,
            "token_expires_in": max(0, caller.claims.expires_at - int(time.time())),
        }
    )
