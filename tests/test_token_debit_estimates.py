"""An answer without usage is charged for everything it carried: every choice, tool
calls and reasoning; an answer with usage is charged what the provider says."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.simulator.tokens import count_prompt_tokens
from tests.api_calls import bearer, client_with_token
from tests.rate_limit_calls import token_gate

BUDGET = 60  # tokens a minute: one a second, so a debt in seconds is a debt in tokens
MESSAGES = [{"role": "user", "content": "Tell me something"}]


async def charged(http, token: str) -> int:
    """What the client's last answer was charged, read as its client sees it: the
    budget, plus the debt the next request is refused for (Retry-After, in seconds)."""
    for _ in range(50):  # the debit follows the answer
        response = await token_gate(http, token)  # only a chat is refused for tokens
        if response.status == 429:
            assert response.headers["x-ratelimit-remaining-tokens"] == "0"
            return BUDGET + int(response.headers["Retry-After"])
        await asyncio.sleep(0.02)
    return 0  # never refused: the answer cost at most the budget


async def limited(make_client, make_settings, **changes: Any):
    settings = make_settings(
        rate_limit_tokens_per_minute=BUDGET, rate_limit_chat_per_minute=100, **changes
    )
    http = await make_client(settings)
    _, token = await client_with_token(http)
    return http, token


def sse(*objects: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(obj) + b"\n\n" for obj in objects) + (
        b"data: [DONE]\n\n"
    )


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1731000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


async def charged_for_stream(make_client, make_settings, provider_upstream, body: bytes) -> int:
    """What a client is charged for an answer a provider streams as `body`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    upstream = await provider_upstream(answer, "streaming")
    http, token = await limited(make_client, make_settings, upstreams=(upstream,))
    chat = {"model": "gpt-sim", "messages": MESSAGES, "stream": True}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    assert response.status == 200, await response.text()
    assert await response.read() == body
    return await charged(http, token)


@pytest.mark.parametrize("choices", [8, 64])
async def test_every_streamed_choice_is_charged_when_the_provider_gives_no_usage(
    make_client, make_settings, simulator, choices
):
    http, token = await limited(make_client, make_settings)
    chat = {"model": "gpt-sim", "messages": MESSAGES, "stream": True, "n": choices}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    assert response.status == 200, await response.text()
    assert b'"usage"' not in await response.read()

    # relay forwards the body as sent: it does not ask for usage itself.
    assert "stream_options" not in simulator.state.requests[-1].json()
    # What the simulator would have reported: 16 tokens a choice.
    provider_total = count_prompt_tokens(MESSAGES) + simulator.config.tokens * choices
    assert await charged(http, token) >= provider_total


async def test_a_streamed_tool_call_without_content_is_charged_for_its_arguments(
    make_client, make_settings, provider_upstream
):
    arguments = orjson.dumps({"text": "x" * 3990}).decode()
    assert len(arguments) >= 4000
    body = sse(
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "save", "arguments": ""},
                    }
                ]
            }
        ),
        *(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + 50]}}]})
            for i in range(0, len(arguments), 50)
        ),
        chunk({}, "tool_calls"),
    )
    charge = await charged_for_stream(make_client, make_settings, provider_upstream, body)
    assert charge >= len(arguments) // 4 - 2  # a second's refill, rounding


async def test_streamed_reasoning_is_charged(make_client, make_settings, provider_upstream):
    thought = "Let me think about this. " * 160  # 4,000 characters
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        *(
            chunk({"content": None, "reasoning_content": thought[i : i + 40]})
            for i in range(0, len(thought), 40)
        ),
        chunk({"content": "Yes."}),
        chunk({}, "stop"),
    )
    charge = await charged_for_stream(make_client, make_settings, provider_upstream, body)
    assert charge >= len(thought) // 4 - 2


async def test_every_choice_of_a_whole_answer_without_usage_is_charged(
    make_client, make_settings, provider_upstream
):
    words = ["alpha " * 200, "beta " * 240, "gamma " * 200]  # 1,200 characters each

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1731000000,
                "model": "fake-model",
                "choices": [
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    for index, text in enumerate(words)
                ],
            }
        )

    upstream = await provider_upstream(answer, "whole")
    http, token = await limited(make_client, make_settings, upstreams=(upstream,))
    chat = {"model": "gpt-sim", "messages": MESSAGES, "n": 3}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    assert response.status == 200, await response.text()
    assert "usage" not in await response.json()

    assert await charged(http, token) >= 3 * 1200 // 4 - 2


@pytest.mark.parametrize("stream", [True, False])
async def test_the_providers_usage_is_what_is_charged(make_client, make_settings, stream):
    http, token = await limited(make_client, make_settings)
    chat: dict[str, Any] = {"model": "gpt-sim", "messages": MESSAGES, "n": 8, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    assert response.status == 200, await response.text()
    if stream:
        events = (await response.read()).split(b"\n\n")
        usage = orjson.loads(events[-3].removeprefix(b"data: "))["usage"]
    else:
        usage = (await response.json())["usage"]

    # Exactly the provider's count, less at most a second or two of refill.
    assert usage["total_tokens"] - 2 <= await charged(http, token) <= usage["total_tokens"]


async def test_usage_without_a_total_is_charged_its_prompt_and_completion_tokens(
    make_client, make_settings, provider_upstream
):
    # A provider that reports its two counts and no total_tokens (FastDeploy did).
    usage = {"prompt_tokens": 30, "completion_tokens": 170}
    body = sse(chunk({"content": "Hi"}, "stop"), {**chunk({}), "choices": [], "usage": usage})
    charged_tokens = await charged_for_stream(make_client, make_settings, provider_upstream, body)
    # Exactly 200, less at most a second or two of refill; the estimate would be ~30.
    assert 198 <= charged_tokens <= 200
