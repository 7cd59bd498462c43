"""`GET /v1/models` and `GET /v1/models/{model}`."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from relay.simulator.auth import authorize
from relay.simulator.errors import OpenAIError, model_not_found
from relay.simulator.keys import SIMULATOR_CONFIG

# A fixed date keeps the listing identical from run to run.
_CREATED = 1_700_000_000


async def list_models(request: web.Request) -> web.Response:
    config = request.app[SIMULATOR_CONFIG]
    try:
        authorize(request, config.api_key)
    except OpenAIError as exc:
        return exc.response()
    return _json({"object": "list", "data": [_model(model) for model in config.models]})


async def retrieve_model(request: web.Request) -> web.Response:
    config = request.app[SIMULATOR_CONFIG]
    model = request.match_info["model"]
    try:
        authorize(request, config.api_key)
        if model not in config.models:
            raise model_not_found(model)
    except OpenAIError as exc:
        return exc.response()
    return _json(_model(model))


def _model(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": "relay-simulator"}


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
        headers={"Content-Type": "application/json"},
    )
