"""The upstream simulator speaks OpenAI's wire format and misbehaves on request."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.simulator import (
    SIMULATOR_CONFIG,
    SIMULATOR_STATE,
    SimulatorConfig,
    completion_text,
    create_simulator_app,
)
from relay.simulator.command import add_arguments

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "Say hello to me"}]}
PROMPT_TOKENS = 4 + 3  # four words plus three for the one message
USAGE_DETAILS = {
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        **USAGE_DETAILS,
    }


async def simulator(aiohttp_client: Any, **config: Any) -> TestClient[web.Request, web.Application]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_simulator_app(SimulatorConfig(**config))
    )
    return client


def events(body: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON decoded except `[DONE]`."""
    assert body.endswith(b"\n\n")
    payloads = []
    for event in body[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ")
        data = event[len(b"data: ") :]
        payloads.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return payloads


def dechunk(body: bytes) -> list[bytes]:
    """Split an HTTP/1.1 chunked body into its chunks, checking the framing."""
    chunks: list[bytes] = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return chunks
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


async def raw_post(server: TestServer, payload: dict[str, Any]) -> tuple[bytes, bytes]:
    """POST over a bare socket and return (head, body) exactly as they crossed the wire."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    body = orjson.dumps(payload)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head, rest


def chunk(cid: str, created: int, choices: list[Any], **extra: Any) -> bytes:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": "sim-small",
        "service_tier": "default",
        "system_fingerprint": "fp_73696d2d31",
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(content: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
    return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}]


async def test_a_stream_is_one_http_chunk_per_event_in_openai_order(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_simulator_app(SimulatorConfig(tokens=3)))
    unpadded = {"include_obfuscation": False}

    head, body = await raw_post(server, {**CHAT, "stream": True, "stream_options": unpadded})

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: text/event-stream; charset=utf-8\r\n" in head
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    chunks = dechunk(body)
    first = orjson.loads(chunks[0][len(b"data: ") :])
    cid, created = first["id"], first["created"]
    assert cid.startswith("chatcmpl-")
    assert chunks == [
        chunk(cid, created, delta({"role": "assistant", "content": "", "refusal": None})),
        chunk(cid, created, delta({"content": "Hello"})),
        chunk(cid, created, delta({"content": " from"})),
        chunk(cid, created, delta({"content": " the"})),
        chunk(cid, created, delta({}, "stop")),
        b"data: [DONE]\n\n",
    ]


async def test_usage_chunk_comes_last_and_only_when_asked_for(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, tokens=2)

    plain = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    asked = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )

    plain_events = events(await plain.read())
    assert all("usage" not in event for event in plain_events[:-1])
    asked_events = events(await asked.read())
    *answer, usage_chunk, done = asked_events
    assert [event["usage"] for event in answer] == [None] * 4
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == usage(2)
    assert usage_chunk["id"] == answer[0]["id"]
    assert done == "[DONE]"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_delta_chunks_end_with_obfuscation_unless_told_not_to(
    aiohttp_client: Any, include_usage: bool
) -> None:
    client = await simulator(aiohttp_client, tokens=40)
    asked = {"stream_options": {"include_usage": True}} if include_usage else {}

    padded = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, **asked})
    answer = events(await padded.read())[:-1]
    deltas, usage_chunks = answer[:42], answer[42:]
    pads = [event["obfuscation"] for event in deltas]
    assert all(re.fullmatch(r"[A-Za-z0-9]{1,16}", pad) for pad in pads)
    assert len(set(pads)) > 1  # random, so sizes say nothing
    # As OpenAI sends them: right after `choices`, and `usage` (when asked for) after it.
    last_keys = ["obfuscation", "usage"] if include_usage else ["obfuscation"]
    assert all(list(event)[-len(last_keys) :] == last_keys for event in deltas)
    assert all("obfuscation" not in event for event in usage_chunks)
    assert len(usage_chunks) == int(include_usage)

    options = {"stream_options": {"include_obfuscation": False, "include_usage": include_usage}}
    plain = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, **options})
    assert all("obfuscation" not in event for event in events(await plain.read())[:-1])


async def test_n_choices_stream_interleaved_and_come_whole(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, tokens=3)
    options = {"include_usage": True, "include_obfuscation": False}
    streamed = await client.post(
        "/v1/chat/completions", json={**CHAT, "n": 2, "stream": True, "stream_options": options}
    )
    *answer, usage_chunk, _ = events(await streamed.read())
    order = [choice["index"] for event in answer for choice in event["choices"]]
    assert order == [0, 1] * 5  # role, three tokens and the finish, one of each in turn
    texts = {0: "", 1: ""}
    for event in answer:
        [choice] = event["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: completion_text(3), 1: completion_text(3, choice=1)}
    assert texts[0] != texts[1]
    assert usage_chunk["usage"]["completion_tokens"] == 6

    whole = await (await client.post("/v1/chat/completions", json={**CHAT, "n": 3})).json()
    assert [choice["index"] for choice in whole["choices"]] == [0, 1, 2]
    assert [choice["message"]["content"] for choice in whole["choices"]] == [
        completion_text(3, choice) for choice in range(3)
    ]
    assert whole["usage"]["completion_tokens"] == 9


async def test_a_non_streamed_answer_is_a_chat_completion(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, tokens=5)

    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "sim-large"})

    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    body = await response.json()
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body == {
        "id": body["id"],
        "object": "chat.completion",
        "created": body["created"],
        "model": "sim-large",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello from the relay simulator",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(5),
        "service_tier": "default",
        "system_fingerprint": "fp_73696d2d31",
    }


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_a_token_limit_shortens_the_answer_with_finish_reason_length(
    aiohttp_client: Any, field: str
) -> None:
    client = await simulator(aiohttp_client, tokens=16)

    whole = await client.post("/v1/chat/completions", json={**CHAT, field: 3})
    streamed = await client.post("/v1/chat/completions", json={**CHAT, field: 3, "stream": True})

    body = await whole.json()
    assert body["choices"][0]["message"]["content"] == "Hello from the"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    *chunks, done = events(await streamed.read())
    assert done == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from the"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_answers_longer_than_the_word_list_repeat_it_predictably(
    aiohttp_client: Any,
) -> None:
    client = await simulator(aiohttp_client, tokens=40)

    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()

    text = body["choices"][0]["message"]["content"]
    assert text == completion_text(40)
    assert text.startswith("Hello from the relay simulator.")
    assert " Hello from" in text


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (400, "invalid_request_error", None),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (503, "server_error", None),
    ],
)
async def test_error_status_answers_every_chat_request_with_an_openai_error(
    aiohttp_client: Any, status: int, type_: str, code: str | None
) -> None:
    client = await simulator(aiohttp_client, error_status=status)

    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert response.status == status
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    assert error["message"]


async def test_an_account_out_of_quota_is_openais_429_insufficient_quota(
    aiohttp_client: Any,
) -> None:
    client = await simulator(aiohttp_client, out_of_quota=True)

    response = await client.post("/v1/chat/completions", json=CHAT)

    assert response.status == 429
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "retry-after" not in response.headers  # no wait ends it


async def test_a_config_change_applies_to_the_next_request(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client)

    client.app[SIMULATOR_CONFIG].error_status = 500
    failed = await client.post("/v1/chat/completions", json=CHAT)
    client.app[SIMULATOR_CONFIG].error_status = None
    client.app[SIMULATOR_CONFIG].tokens = 1
    answered = await client.post("/v1/chat/completions", json=CHAT)

    assert failed.status == 500
    assert (await answered.json())["choices"][0]["message"]["content"] == "Hello"


async def test_an_unknown_model_is_model_not_found(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client)

    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})

    assert response.status == 404
    assert await response.json() == {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, None),
        (b"[1, 2]", None, None),
        (orjson.dumps({"messages": CHAT["messages"]}), None, None),
        (orjson.dumps({"model": "sim-small"}), "messages", "missing_required_parameter"),
        (orjson.dumps({"model": "sim-small", "messages": []}), "messages", "empty_array"),
        (orjson.dumps({"model": "sim-small", "messages": "hi"}), "messages", "invalid_type"),
        (orjson.dumps({**CHAT, "messages": [{"content": "x"}]}), "messages[0].role", None),
        (orjson.dumps({**CHAT, "stream": "yes"}), "stream", "invalid_type"),
        (orjson.dumps({**CHAT, "max_tokens": 0}), "max_tokens", "integer_below_min_value"),
        (orjson.dumps({**CHAT, "n": 0}), "n", "integer_below_min_value"),
        (orjson.dumps({**CHAT, "n": 129}), "n", "integer_above_max_value"),
        (orjson.dumps({**CHAT, "n": "2"}), "n", "invalid_type"),
        (
            orjson.dumps({**CHAT, "stream": True, "stream_options": {"include_obfuscation": 1}}),
            "stream_options.include_obfuscation",
            "invalid_type",
        ),
        (orjson.dumps({**CHAT, "stream_options": {"include_usage": True}}), "stream_options", None),
    ],
)
async def test_a_malformed_request_is_a_400_invalid_request_error(
    aiohttp_client: Any, body: bytes, param: str | None, code: str | None
) -> None:
    client = await simulator(aiohttp_client)

    response = await client.post("/v1/chat/completions", data=body)

    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_cut_after_breaks_the_stream_without_done(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, tokens=10, cut_after=2)

    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for data in response.content.iter_any():
            received += data

    payloads = events(received)
    assert [p["choices"][0]["delta"].get("content") for p in payloads] == ["", "Hello", " from"]
    state = client.app[SIMULATOR_STATE]
    assert (state.streams_cut, state.streams_completed, state.streams_open) == (1, 0, 0)


async def test_cut_after_drops_a_non_streamed_request_without_a_response(
    aiohttp_client: Any,
) -> None:
    client = await simulator(aiohttp_client, cut_after=0)

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/chat/completions", json=CHAT)


async def test_first_byte_delay_holds_back_the_response(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, first_byte_delay=0.3)
    loop = asyncio.get_running_loop()

    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            timeout=aiohttp.ClientTimeout(sock_read=0.05),
        )
    started = loop.time()
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert loop.time() - started >= 0.3
    assert events(await response.read())[-1] == "[DONE]"


async def test_an_api_key_is_required_when_configured(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, api_key="sk-simulator-secret")

    missing = await client.post("/v1/chat/completions", json=CHAT)
    wrong = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-wrong-key-123456"}
    )
    models = await client.get("/v1/models")
    right = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-simulator-secret"}
    )

    assert missing.status == wrong.status == models.status == 401
    assert (await missing.json())["error"]["message"].startswith("You didn't provide an API key")
    wrong_error = (await wrong.json())["error"]
    assert wrong_error["code"] == "invalid_api_key"
    assert "sk-wrong-key-123456" not in wrong_error["message"]
    assert right.status == 200


async def test_every_chat_request_is_recorded_as_received(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client)
    body = b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "seed": 7}'

    await client.post(
        "/v1/chat/completions", data=body, headers={"authorization": "Bearer upstream-key"}
    )
    await client.post("/v1/chat/completions", data=b"{bad")

    first, second = client.app[SIMULATOR_STATE].requests
    assert first.body == body
    assert first.json()["seed"] == 7
    assert first.headers["Authorization"] == "Bearer upstream-key"
    assert second.body == b"{bad"


async def test_a_client_leaving_mid_stream_is_counted_as_a_disconnect(
    aiohttp_client: Any,
) -> None:
    client = await simulator(aiohttp_client, tokens=200, token_delay=0.01)
    state = client.app[SIMULATOR_STATE]

    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await response.content.readuntil(b"\n\n")
    assert state.streams_open == 1
    response.close()

    await state.wait_for(lambda s: s.streams_disconnected == 1)
    assert (state.streams_open, state.streams_completed) == (0, 0)


async def test_models_are_listed_and_retrieved_in_openai_shape(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, models=("sim-small", "org/sim-large"))

    listing = await (await client.get("/v1/models")).json()
    one = await client.get("/v1/models/org/sim-large")
    missing = await client.get("/v1/models/gpt-9")

    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["sim-small", "org/sim-large"]
    for model in listing["data"]:
        assert model == {
            "id": model["id"],
            "object": "model",
            "created": model["created"],
            "owned_by": "relay-simulator",
        }
        assert isinstance(model["created"], int)
    assert (await one.json())["id"] == "org/sim-large"
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


async def test_an_unknown_url_is_an_openai_404(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client)

    response = await client.get("/v1/chat/completions")

    assert response.status == 404
    error = (await response.json())["error"]
    assert error["message"] == "Invalid URL (GET /v1/chat/completions)"


async def test_the_openai_sdk_completes_streamed_and_not(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_simulator_app(SimulatorConfig(tokens=6, api_key="sk-x")))
    messages: Any = CHAT["messages"]

    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0
    ) as sdk:
        completion = await sdk.chat.completions.create(model="sim-small", messages=messages)
        stream = await sdk.chat.completions.create(
            model="sim-small",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        finish_reasons = []
        last_usage = None
        async for event in stream:
            for choice in event.choices:
                parts.append(choice.delta.content or "")
                finish_reasons.append(choice.finish_reason)
            last_usage = event.usage
        models = await sdk.models.list()
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="gpt-9", messages=messages)

    assert completion.choices[0].message.content == completion_text(6)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == PROMPT_TOKENS + 6
    assert "".join(parts) == completion_text(6)
    assert finish_reasons[-1] == "stop"
    assert last_usage is not None and last_usage.completion_tokens == 6
    assert [m.id async for m in models] == ["sim-small", "sim-large"]


async def test_the_sdk_sees_a_cut_stream_as_a_connection_error(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_simulator_app(SimulatorConfig(tokens=6, cut_after=3)))
    parts: list[str | None] = []
    messages: Any = CHAT["messages"]

    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="x", max_retries=0
    ) as sdk:
        stream = await sdk.chat.completions.create(
            model="sim-small", messages=messages, stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            async for event in stream:
                parts.append(event.choices[0].delta.content)

    assert parts == ["", "Hello", " from", " the"]


ACCOUNT = SimulatorConfig()
RATE_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{part}-{kind}"
    for part in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
)


def assert_openai_meta(headers: Any) -> None:
    """What OpenAI documents on every answer ("Debugging requests")."""
    assert headers["openai-version"] == "2020-10-01"
    assert int(headers["openai-processing-ms"]) >= 0
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_name_the_account_and_its_rate_limits_as_openai_does(
    aiohttp_client: Any, stream: bool
) -> None:
    client = await simulator(aiohttp_client, tokens=5, requests_per_minute=60)
    client.app[SIMULATOR_CONFIG].tokens_per_minute = 1000

    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    await response.read()

    headers = response.headers
    assert_openai_meta(headers)
    assert re.fullmatch(r"org-[A-Za-z0-9]{24}", headers["openai-organization"])
    assert re.fullmatch(r"proj_[A-Za-z0-9]{24}", headers["openai-project"])
    assert (headers["openai-organization"], headers["openai-project"]) == (
        ACCOUNT.organization,
        ACCOUNT.project,
    )
    assert {name: headers[name] for name in RATE_LIMIT_HEADERS} == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",  # one request of 60 a minute
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - PROMPT_TOKENS - 5),
        "x-ratelimit-reset-tokens": f"{(PROMPT_TOKENS + 5) * 60}ms",  # 12 of 1000 a minute
    }


async def test_a_429_says_no_request_is_left_and_when_to_try_again(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, error_status=429, requests_per_minute=30)

    response = await client.post("/v1/chat/completions", json=CHAT)

    assert response.status == 429
    headers = response.headers
    assert_openai_meta(headers)
    assert headers["openai-organization"] == ACCOUNT.organization
    assert headers["x-ratelimit-limit-requests"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "2s"
    assert headers["x-ratelimit-limit-tokens"] == str(ACCOUNT.tokens_per_minute)
    assert headers["x-ratelimit-remaining-tokens"] == str(ACCOUNT.tokens_per_minute)
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "2000")
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    # OpenAI names the organization in the message too.
    assert f"in organization {ACCOUNT.organization} on requests per min" in error["message"]
    assert "Please try again in 2s." in error["message"]


async def test_a_caller_whose_key_is_refused_learns_no_account(aiohttp_client: Any) -> None:
    client = await simulator(aiohttp_client, api_key="sk-right")

    refused = await client.post("/v1/chat/completions", json=CHAT)
    unknown_url = await client.get("/v1/nothing-here")
    listed = await client.get("/v1/models", headers={"Authorization": "Bearer sk-right"})

    for response in (refused, unknown_url):
        assert_openai_meta(response.headers)
        assert "openai-organization" not in response.headers
        assert "openai-project" not in response.headers
        assert not any(name in response.headers for name in RATE_LIMIT_HEADERS)
    assert listed.status == 200
    assert listed.headers["openai-organization"] == ACCOUNT.organization
    assert all(name in listed.headers for name in RATE_LIMIT_HEADERS)


async def test_the_sdk_reads_the_request_id_and_waits_as_a_429_says(aiohttp_server: Any) -> None:
    # 60,000 a minute: one request back every millisecond, so the SDK's wait is short.
    config = SimulatorConfig(requests_per_minute=60_000, api_key="sk-x")
    server = await aiohttp_server(create_simulator_app(config))
    messages: Any = CHAT["messages"]

    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=1
    ) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="sim-small", messages=messages
        )
        completion = raw.parse()
        config.error_status = 429
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="sim-small", messages=messages)

    assert completion._request_id == raw.headers["x-request-id"]
    assert raw.headers["x-ratelimit-remaining-requests"] == "59999"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after-ms"] == "1"
    # Asked once, refused, asked again after the wait: three requests in all.
    assert len(server.app[SIMULATOR_STATE].requests) == 3


def test_command_line_flags_have_the_documented_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    defaults = parser.parse_args([])
    given = parser.parse_args(
        ["--port", "9191", "--token-delay-ms", "20", "--cut-after", "5", "--error-status", "429"]
    )

    assert (defaults.host, defaults.port, defaults.tokens) == ("127.0.0.1", 9090, 16)
    assert (defaults.error_status, defaults.cut_after, defaults.api_key) == (None, None, None)
    assert (given.port, given.token_delay_ms, given.cut_after, given.error_status) == (
        9191,
        20.0,
        5,
        429,
    )


@pytest.mark.parametrize("status", ["200", "302", "99", "600", "many"])
def test_only_an_error_status_can_be_asked_for(status: str) -> None:
    # An error body under a success or redirect status, or no HTTP status at all, is
    # no provider's answer (the OpenAI SDK took a 200 error for an empty completion).
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--error-status", status])


@pytest.mark.parametrize(
    "given",
    [
        ["--tokens", "-1"],
        ["--tokens", "many"],
        ["--cut-after", "-3"],
        ["--token-delay-ms", "-5"],
        ["--first-byte-delay-ms", "nan"],
        ["--token-delay-ms", "inf"],
        ["--models", ""],
        ["--models", ",,"],
        ["--port", "70000"],
    ],
)
def test_a_value_that_makes_no_sense_is_a_usage_error(given: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(given)


def test_models_are_read_as_a_list_of_ids() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--models", "a,,b"]).models == ("a", "b")
    assert parser.parse_args(["--tokens", "0"]).tokens == 0


async def test_relay_simulate_serves_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = (
        "import argparse, sys\n"
        "from relay.simulator.command import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        "--port",
        str(port),
        "--tokens",
        "2",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), 10)
        assert f":{port}/v1" in banner.decode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT) as response,
        ):
            body = await response.json()
        assert body["choices"][0]["message"]["content"] == "Hello from"
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 10)
    assert returncode == 0
