"""The bearer-key check, answered in OpenAI's words."""

from __future__ import annotations

import hmac

from aiohttp import web

from relay.simulator.errors import OpenAIError
from relay.simulator.keys import SPENT_TOKENS

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


def authorize(request: web.Request, api_key: str | None) -> None:
    """Raise an OpenAIError (401) unless the request carries `api_key`, when one is set;
    from then on the request is the account's, and its answer names the account."""
    if api_key is not None:
        _check(request, api_key)
    request[SPENT_TOKENS] = 0


def _check(request: web.Request, api_key: str) -> None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise OpenAIError(401, _NO_KEY)
    if not hmac.compare_digest(presented.encode(), api_key.encode()):
        raise OpenAIError(
            401,
            f"Incorrect API key provided: {_mask(presented)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _mask(key: str) -> str:
    # OpenAI echoes a wrong key with its middle starred out; short keys are starred whole.
    if len(key) < 12:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]
