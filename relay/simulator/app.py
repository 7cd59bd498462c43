"""`create_simulator_app`: the OpenAI-compatible provider relay is tested and measured against."""

from __future__ import annotations

from aiohttp import web

from relay.simulator.chat import create_chat_completion
from relay.simulator.config import SimulatorConfig
from relay.simulator.errors import OpenAIError
from relay.simulator.headers import setup_headers
from relay.simulator.keys import SIMULATOR_CONFIG, SIMULATOR_STATE
from relay.simulator.models import list_models, retrieve_model
from relay.simulator.state import SimulatorState

# OpenAI takes bodies far beyond aiohttp's 1 MiB default (base64 images, long contexts).
_MAX_BODY = 64 * 1024 * 1024


def create_simulator_app(config: SimulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    app[SIMULATOR_CONFIG] = config if config is not None else SimulatorConfig()
    app[SIMULATOR_STATE] = SimulatorState()
    setup_headers(app)
    router = app.router
    router.add_get("/v1/models", list_models, name="list_models")
    router.add_get("/v1/models/{model:.+}", retrieve_model, name="retrieve_model")
    router.add_post("/v1/chat/completions", create_chat_completion, name="create_chat_completion")
    # Last, so it only answers what nothing else matched (wrong path or method), as OpenAI does.
    router.add_route("*", "/{path:.*}", reject_unknown_url, name="reject_unknown_url")
    return app


async def reject_unknown_url(request: web.Request) -> web.Response:
    return OpenAIError(404, f"Invalid URL ({request.method} {request.path})").response()
