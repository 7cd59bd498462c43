"""What a test reads of a client's token bucket: a chat call that spends nothing."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.api_calls import assert_error, bearer

# No upstream serves it: the call passes the chat buckets and the token gate (or is
# refused by them), then ends in a 404 before anything is asked of a provider.
UNSERVED_CHAT = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}


async def token_gate(http: TestClient, token: str) -> ClientResponse:
    """A chat call the client's token bucket admits or refuses, at no cost in tokens."""
    response = await http.post("/v1/chat/completions", json=UNSERVED_CHAT, headers=bearer(token))
    await response.read()
    return response


async def token_refusal(http: TestClient, token: str) -> ClientResponse:
    """The client's next chat, refused for tokens once the last answer's debit (which
    follows the answer) has arrived."""
    for _ in range(50):
        response = await token_gate(http, token)
        if response.status == 429:
            break
        await asyncio.sleep(0.02)
    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens"
    return response


def completion_body(used: int) -> bytes:
    """A provider's whole chat completion whose usage is `used` tokens in all."""
    return orjson.dumps(
        {
            "id": "chatcmpl-held",
            "object": "chat.completion",
            "created": 1731000000,
            "model": "gpt-sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": used - 1, "completion_tokens": 1, "total_tokens": used},
        }
    )
