"""How real providers report an answer's usage and end, off OpenAI's own path: Groq's
usage in `x_groq`, mlx-vlm's `input_tokens` and `output_tokens`, OpenRouter's
`finish_reason: "error"`, Azure's filter annotations.
What relay charges and records follows what the provider said."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.upstreams.observer import StreamObserver, summarize_completion
from tests.api_calls import bearer, client_with_token
from tests.history_calls import stored_messages
from tests.rate_limit_calls import token_refusal
from tests.scripted_provider import play, sent

DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 23, "completion_tokens": 19, "total_tokens": 42}
MLX_USAGE = {"input_tokens": 23, "output_tokens": 4977}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def groq_last(usage: dict[str, Any]) -> bytes:
    """Groq's last chunk: its usage (with its timings) in `x_groq`, not `usage`."""
    timings = {"queue_time": 0.07, "prompt_time": 0.006, "completion_time": 0.022}
    return chunk({}, "stop", x_groq={"id": "req_01", "usage": {**usage, **timings}})


# OpenRouter's error mid-stream: an error object and finish_reason "error" in one chunk.
OPENROUTER_FAILURE = {"code": "server_error", "message": "Provider disconnected unexpectedly"}
OPENROUTER_ERROR = chunk({"content": ""}, "error", error=OPENROUTER_FAILURE)
# Azure's asynchronous filter: annotations with no delta, nameless, then its verdict.
AZURE_ANNOTATION = b'data: {"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":null,"content_filter_results":{},"content_filter_offsets":{"check_offset":3,"start_offset":0,"end_offset":3}}],"usage":null}\n\n'  # noqa: E501
AZURE_FILTERED = b'data: {"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":"content_filter","content_filter_results":{"protected_material_text":{"detected":true,"filtered":true}}}],"usage":null}\n\n'  # noqa: E501

SCRIPTS: dict[str, list[Any]] = {
    "groq": [chunk({"role": "assistant", "content": "Hi"}), groq_last(USAGE), DONE],
    "groq-heavy": [chunk({"content": "Hi"}), groq_last({**USAGE, "total_tokens": 5000}), DONE],
    # mlx-vlm's (and other local servers') names for the two counts, and no total.
    "mlx": [chunk({"content": "Hi"}), chunk({}, "stop", usage=MLX_USAGE), DONE],
    "error-finish": [chunk({"content": "Hel"}), chunk({}, "error"), DONE],
    "openrouter-error": [
        b": OPENROUTER PROCESSING\n\n",
        chunk({"content": "Hel"}),
        OPENROUTER_ERROR,
    ],
}


def observe(stream: bytes) -> StreamObserver:
    observer = StreamObserver()
    observer.feed(stream)
    observer.close(body_ended=True)
    return observer


def test_groqs_usage_in_x_groq_is_the_answers_usage():
    observer = observe(sent(SCRIPTS["groq"]))
    assert observer.usage is not None
    assert {key: observer.usage[key] for key in USAGE} == USAGE


def test_openais_usage_chunk_wins_over_groqs_own():
    """Asked for one, Groq sends OpenAI's usage chunk too: the same counts, read once."""
    usage_chunk = b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n"
    observer = observe(chunk({"content": "Hi"}) + usage_chunk + groq_last({"total_tokens": 1}))
    assert observer.usage == USAGE


def test_a_whole_answer_with_groqs_usage_is_read_alike():
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}],
        "x_groq": {"id": "req_01", "usage": USAGE},
    }
    assert summarize_completion(orjson.dumps(body)).usage == USAGE


def test_a_finish_reason_of_error_fails_the_answer_without_an_error_object():
    observer = observe(sent(SCRIPTS["error-finish"]))
    assert observer.outcome == "failed"
    assert observer.error is not None and "error" in observer.error["message"]


def test_openrouters_error_chunk_keeps_its_own_error():
    observer = observe(sent(SCRIPTS["openrouter-error"]))
    assert observer.outcome == "failed"
    assert observer.error == OPENROUTER_FAILURE


def test_azures_filter_verdict_ends_the_answer_as_the_client_saw_it():
    """Its annotations carry no words and no id; a verdict of content_filter after the
    words is an ending the provider chose, as "length" is: the answer is complete,
    with the words the client received."""
    stream = chunk({"content": "Hey"}) + AZURE_ANNOTATION + AZURE_FILTERED + DONE
    observer = observe(stream)
    assert (observer.outcome, observer.text, observer.response_id) == (
        "complete",
        "Hey",
        "chatcmpl-1",
    )
    assert observer.finish_reason == "content_filter"


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream):
    ended = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        return await play(request, SCRIPTS[(await request.json())["model"]], ended)

    upstream = await provider_upstream(chat, "endings", models={model: model for model in SCRIPTS})
    settings = make_settings(upstreams=(upstream,), rate_limit_tokens_per_minute=1000)
    http = await make_client(settings)
    client, token = await client_with_token(http)
    yield http, client["id"], token
    ended.set()


async def stream(http, token: str, model: str) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert response.status == 200
    return await response.read()


async def assistant_rows(database_url: str, client_id: str) -> list[dict[str, Any]]:
    rows = await stored_messages(database_url, client_id)
    return [row for row in rows if row["role"] == "assistant"]


async def test_groqs_usage_is_recorded_and_charged(relay, database_url):
    http, client_id, token = relay
    assert await stream(http, token, "groq") == sent(SCRIPTS["groq"])
    [row] = await assistant_rows(database_url, client_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (23, 19)
    # 5000 tokens, as Groq counted them (not the few bytes' estimate), put the bucket in debt.
    await stream(http, token, "groq-heavy")
    await token_refusal(http, token)


async def test_usage_named_input_and_output_tokens_is_recorded_and_charged(relay, database_url):
    http, client_id, token = relay
    assert await stream(http, token, "mlx") == sent(SCRIPTS["mlx"])
    [row] = await assistant_rows(database_url, client_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (23, 4977)
    # 5000 tokens, as counted (not the few bytes' estimate), put the bucket in debt.
    await token_refusal(http, token)


async def test_a_stream_ended_by_finish_reason_error_is_recorded_failed(relay, database_url):
    http, client_id, token = relay
    for model in ("error-finish", "openrouter-error"):
        assert await stream(http, token, model) == sent(SCRIPTS[model])  # passed on as sent
    rows = await assistant_rows(database_url, client_id)
    assert [(row["content"], row["status"]) for row in rows] == [("Hel", "failed")] * 2
