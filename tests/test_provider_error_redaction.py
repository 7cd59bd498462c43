"""A provider's error object is reworded whole: relay's key, account and provider model id
are gone from every string in it (its type, code, param, nested details), and vLLM's bare
`{"object": "error", …}` is an error on every path, refused, whole or streamed."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from tests.test_provider_redaction import (
    ACCOUNT,
    CHUNK,
    DONE,
    PROJECT,
    answer_status,
    ask,
    assert_nothing_of_relays,
    leaky_relay,
)


def nested_error(key: str) -> dict[str, Any]:
    """OpenAI's error object, quoting relay's secrets outside its message (LiteLLM-style)."""
    return {
        "message": "Bad request.",
        "type": f"invalid_request_error for {ACCOUNT}",
        "param": f"api_key={key}",
        "code": f"{PROJECT}_over_quota",
        "details": {
            "account": ACCOUNT,
            "attempts": [{"key": key, "model": "leaky-model", "status": 400}, "leaky-model", 7],
            "retryable": False,
            "limit": None,
        },
    }


def nested_error_reworded() -> dict[str, Any]:
    return {
        "message": "Bad request.",
        "type": "invalid_request_error for org-[redacted]",
        "param": "api_key=[redacted]",
        "code": "proj_[redacted]_over_quota",
        "details": {
            "account": "org-[redacted]",
            "attempts": [
                {"key": "[redacted]", "model": "public-leaky", "status": 400},
                "public-leaky",
                7,
            ],
            "retryable": False,
            "limit": None,
        },
    }


def bare_error(key: str) -> dict[str, Any]:
    """vLLM's bare error object, with secrets in its message and other fields."""
    return {
        "object": "error",
        "message": f"leaky-model refused key {key}",
        "type": f"BadRequestError ({ACCOUNT})",
        "param": [PROJECT, 3],
        "code": 400,
    }


def bare_error_reworded() -> dict[str, Any]:
    return {
        "object": "error",
        "message": "public-leaky refused key [redacted]",
        "type": "BadRequestError (org-[redacted])",
        "param": ["proj_[redacted]", 3],
        "code": 400,
    }


HARMLESS_BARE = b'{"object":"error","message":"overloaded","type":"server_error","code":503}'
# Deeper than Python's recursion limit allows a recursive walk, and than orjson writes.
DEPTH = 900


def deep_error(key: str) -> bytes:
    """An error whose details bury relay's key DEPTH lists deep."""
    details = b"[" * DEPTH + orjson.dumps(key) + b"]" * DEPTH
    return b'{"error":{"message":"overloaded","details":' + details + b"}}"


async def provider_chat(request: web.Request) -> web.StreamResponse:
    """The last word of the user's message names what the provider does."""
    key = request.headers["Authorization"].removeprefix("Bearer ")
    behaviour = (await request.json())["messages"][-1]["content"]
    if behaviour == "refuse-nested":
        return web.json_response({"error": nested_error(key)}, status=400)
    if behaviour == "refuse-bare":
        return web.json_response(bare_error(key), status=400)
    if behaviour == "whole-nested":
        return web.json_response({"error": nested_error(key)})
    if behaviour == "whole-bare":
        return web.json_response(bare_error(key))
    if behaviour == "whole-deep":
        return web.Response(body=deep_error(key), content_type="application/json")
    if behaviour == "whole-bare-harmless":
        return web.Response(body=HARMLESS_BARE, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if behaviour == "event-nested":
        event = orjson.dumps({"error": nested_error(key)})
    elif behaviour == "event-bare":
        event = orjson.dumps(bare_error(key))
    elif behaviour == "event-deep":
        event = deep_error(key)
    else:  # event-bare-harmless
        event = HARMLESS_BARE
    # An error event after a chunk, then [DONE], as vLLM ends a failed stream.
    for part in (CHUNK, b"data: " + event + b"\n\n", DONE):
        await response.write(part)
    await response.write_eof()
    return response


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    return await leaky_relay(provider_chat, make_settings, make_client, provider_upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat"])
@pytest.mark.parametrize("behaviour", ["refuse-nested", "refuse-bare"])
async def test_a_refusal_quoting_secrets_outside_its_message_is_reworded(
    relay, database_url, behaviour, path, stream
):
    status, received, receipt = await ask(relay, behaviour, stream=stream, path=path)
    assert status == 400
    assert_nothing_of_relays(received)
    error = orjson.loads(received)["error"]
    expected = nested_error_reworded() if behaviour == "refuse-nested" else bare_error_reworded()
    assert error["type"] == expected["type"]
    if behaviour == "refuse-nested":  # a param or code that is a string is passed on
        assert (error["param"], error["code"]) == (expected["param"], expected["code"])
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("whole-nested", {"error": nested_error_reworded()}),
        ("whole-bare", bare_error_reworded()),
    ],
    ids=["nested", "bare"],
)
async def test_a_whole_error_is_reworded_in_every_string_keeps_its_shape_and_fails(
    relay, database_url, behaviour, expected
):
    status, received, receipt = await ask(relay, behaviour, stream=False)
    assert (status, orjson.loads(received)) == (200, expected)  # 200, as the provider sent it
    assert_nothing_of_relays(received)
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


async def test_a_bare_error_quoting_nothing_of_relays_is_failed_and_raised_by_the_sdks(
    relay, database_url
):
    # A whole body passes as sent (a 200 the provider chose); in a stream, the event
    # goes out in OpenAI's shape, which OpenAI's SDKs raise on (the bare one they
    # would hand the application as a chunk of the answer).
    _, received, receipt = await ask(relay, "whole-bare-harmless", stream=False)
    assert received == HARMLESS_BARE
    _, received, _ = await ask(relay, "event-bare-harmless", stream=True)
    harmless = orjson.loads(HARMLESS_BARE)
    del harmless["object"]
    assert received == CHUNK + b"data: " + orjson.dumps({"error": harmless}) + b"\n\n" + DONE
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed", "failed"]


def in_openai_shape(bare: dict[str, Any]) -> dict[str, Any]:
    return {"error": {key: value for key, value in bare.items() if key != "object"}}


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("event-nested", {"error": nested_error_reworded()}),
        ("event-bare", in_openai_shape(bare_error_reworded())),
    ],
    ids=["nested", "bare"],
)
async def test_a_streamed_error_event_is_reworded_in_every_string_and_failed(
    relay, database_url, behaviour, expected
):
    status, received, receipt = await ask(relay, behaviour, stream=True)
    assert status == 200
    assert_nothing_of_relays(received)
    assert received.startswith(CHUNK) and received.endswith(DONE)
    event = received.removeprefix(CHUNK).removesuffix(DONE)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event.removeprefix(b"data: ")) == expected
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("behaviour", ["event-nested", "event-bare"])
async def test_relays_own_chat_takes_a_streamed_error_event_as_a_failure(
    relay, database_url, behaviour, stream
):
    status, received, receipt = await ask(relay, behaviour, stream=stream, path="/v1/chat")
    assert_nothing_of_relays(received)
    if stream:
        assert status == 200
        assert b"event: error\n" in received and b"message.done" not in received
    else:
        assert status == 502
        assert orjson.loads(received)["error"]["code"] == "upstream_error"
    if behaviour == "event-bare":  # the provider's reworded message is what the client reads
        assert b"public-leaky refused key [redacted]" in received
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


@pytest.mark.parametrize(("behaviour", "stream"), [("whole-deep", False), ("event-deep", True)])
async def test_an_error_too_deep_to_write_back_is_replaced_by_a_plain_one(
    relay, database_url, behaviour, stream
):
    status, received, receipt = await ask(relay, behaviour, stream=stream)
    assert status == 200
    assert_nothing_of_relays(received)
    if stream:
        assert received.startswith(CHUNK) and received.endswith(DONE)
        received = received.removeprefix(CHUNK + b"data: ").removesuffix(b"\n\n" + DONE)
    error = orjson.loads(received)["error"]
    assert error["message"] == "The provider failed; its error was not passed on."
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


async def test_openais_sdk_raises_on_a_bare_error_event(relay):
    # What the change is for: the bare shape reached the application as a chunk.
    http, token, _ = relay
    sdk = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key=token, max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="public-leaky",
            messages=[{"role": "user", "content": "event-bare-harmless"}],
            stream=True,
        )
        with pytest.raises(openai.APIError, match="overloaded"):
            async for _ in stream:
                pass
    finally:
        await sdk.close()
