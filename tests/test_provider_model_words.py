"""A provider's model id, renamed by relay, is reworded only where it stands whole: the
provider's message keeps every other word it wrote."""

from __future__ import annotations

import pytest
from aiohttp import web

from relay.upstreams.config import Upstream
from relay.upstreams.rewording import provider_words
from relay.upstreams.routing import Route
from tests.api_calls import assert_error, bearer, client_with_token

MESSAGES = {
    "o": "Rate limit reached for requests on o (o/v1 quota); see docs/o or use o-mini.",
    "model": "This model's maximum context length is 4096 tokens; `model` is busy.",
}


async def provider_chat(request: web.Request) -> web.Response:
    model = (await request.json())["model"]
    error = {"message": MESSAGES[model], "type": "requests", "param": None, "code": None}
    return web.json_response({"error": error}, status=429)


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    upstream = await provider_upstream(
        provider_chat, "short-ids", models={"fast": "o", "public-model": "model"}
    )
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    return http, token


@pytest.mark.parametrize(
    "public,said",
    [
        ("fast", "Rate limit reached for requests on fast (o/v1 quota); see docs/o or use o-mini."),
        (
            "public-model",
            "This model's maximum context length is 4096 tokens; `public-model` is busy.",
        ),
    ],
)
async def test_a_refusal_renames_the_provider_model_only_where_it_stands_whole(relay, public, said):
    http, token = relay
    body = {"model": public, "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    error = await assert_error(response, 429)
    assert error["message"] == said


def route(provider_model: str) -> Route:
    upstream = Upstream("p", "http://p.invalid/v1", {"pub": provider_model})
    return Route("pub", upstream, provider_model)


@pytest.mark.parametrize(
    "provider_model,message,reworded",
    [
        ("gpt-4o", "gpt-4o is busy.", "pub is busy."),
        ("gpt-4o", "Model 'gpt-4o' (gpt-4o-mini aside)", "Model 'pub' (gpt-4o-mini aside)"),
        ("gpt-4o", "use gpt-4o.", "use pub."),
        ("gpt-4o", "gpt-4o.1 and my-gpt-4o and x.gpt-4o", "gpt-4o.1 and my-gpt-4o and x.gpt-4o"),
        ("meta/llama-3", "meta/llama-3: overloaded", "pub: overloaded"),
        ("llama3:8b", '"llama3:8b" not found', '"pub" not found'),
        ("llama3", "llama3:8b is not llama3: pull it", "llama3:8b is not pub: pull it"),
        ("o", "for o1, o_x, o.py, /o/ and o, o", "for o1, o_x, o.py, /o/ and pub, pub"),
        ("m", "model m, then m.", "model pub, then pub."),
        # An id that is no plain word is renamed in a path and before "'s" too.
        ("gemini-1.5-pro", "models/gemini-1.5-pro is not found", "models/pub is not found"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06's context length", "pub's context length"),
        ("gpt-4o", "model:gpt-4o, or gpt-4o/v1", "model:pub, or gpt-4o/v1"),
        ("o1", "o1's context length; models/o1", "pub's context length; models/pub"),
    ],
)
def test_only_the_whole_provider_model_id_is_renamed(provider_model, message, reworded):
    assert provider_words(message, route(provider_model)) == reworded
