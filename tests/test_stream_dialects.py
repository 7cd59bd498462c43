"""Stream dialects of OpenAI-compatible servers that relay's own simulator does not
speak: llama.cpp's `error:` field, Azure's nameless first chunk."""

import hashlib

import openai
import orjson
import pytest
from aiohttp import web

from relay.upstreams.observer import StreamObserver
from tests.api_calls import bearer, client_with_token
from tests.fake_providers import sse_reply
from tests.history_calls import assistant_statuses
from tests.receipt_calls import fetch_receipt

CHUNK = (
    b'data: {"id":"chatcmpl-AZURE123","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
)
FINISH = (
    b'data: {"id":"chatcmpl-AZURE123","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
# llama.cpp's server (server_sent_event(sink, "error", …)) reports a failure mid-stream so.
LLAMA_CPP_ERROR = (
    b'error: {"code":500,"message":"failed to decode the batch","type":"server_error"}\n\n'
)
# Azure OpenAI's first chunk: its prompt filter results, with an empty id and model.
AZURE_FIRST = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
    b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}\n\n'
)


async def provider_chat(request: web.Request) -> web.StreamResponse:
    model = (await request.json())["model"]
    parts = {
        "llama-cpp-error": (CHUNK, LLAMA_CPP_ERROR, DONE),
        "azure": (AZURE_FIRST, CHUNK, FINISH, DONE),
    }[model]
    return await sse_reply(request, *parts)


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    models = {"llama-cpp-error": "llama-cpp-error", "azure": "azure"}
    upstream = await provider_upstream(provider_chat, "dialects", models=models)
    http = await make_client(make_settings(upstreams=(upstream,)))
    client, token = await client_with_token(http)
    return http, token, client["id"]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_an_error_field_fails_the_answer(split):
    observer = StreamObserver()
    stream = CHUNK + LLAMA_CPP_ERROR + DONE
    for piece in [stream[i : i + 1] for i in range(len(stream))] if split else [stream]:
        observer.feed(piece)
    assert observer.error == {
        "code": 500,
        "message": "failed to decode the batch",
        "type": "server_error",
    }
    assert observer.text == "Hi" and observer.done


def test_an_error_field_that_is_not_json_still_fails_the_answer():
    observer = StreamObserver()
    observer.feed(CHUNK + b"error:the model crashed\n\n" + DONE)
    assert observer.error is not None


async def test_llama_cpp_error_mid_stream_is_recorded_failed(relay, database_url):
    http, token, client_id = relay
    body = {"model": "llama-cpp-error", "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post(
        "/v1/chat/completions", json={**body, "stream": True}, headers=bearer(token)
    )
    raw = await response.read()
    # As a `data:` error event, which OpenAI's SDKs raise on (they skip an `error:` line
    # and would hand the application the cut-short answer as whole).
    error = b'{"error":{"code":500,"message":"failed to decode the batch","type":"server_error"}}'
    assert raw == CHUNK + b"data: " + error + b"\n\n" + DONE
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["status"] == "failed"
    assert receipt["response_sha256"] == hashlib.sha256(raw).hexdigest()
    assert await assistant_statuses(database_url, client_id) == ["failed"]


async def test_llama_cpp_error_mid_stream_is_an_error_on_relays_own_chat(relay, database_url):
    http, token, client_id = relay
    body = {"message": "Hi", "model": "llama-cpp-error", "stream": True}
    raw = await (await http.post("/v1/chat", json=body, headers=bearer(token))).read()
    assert b"event: message.done" not in raw  # not a complete answer, as before
    error = orjson.loads(raw.rsplit(b"event: error\ndata: ", 1)[1])["error"]
    assert "failed to decode the batch" in error["message"]
    assert await assistant_statuses(database_url, client_id) == ["failed"]


async def test_azures_nameless_first_chunk_leaves_the_completion_id_to_the_next(relay):
    http, token, _ = relay
    body = {"model": "azure", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    await response.read()
    # Clients built for NEAR's private inference look a receipt up by the completion id.
    found = await http.get("/v1/signature/chatcmpl-AZURE123", headers=bearer(token))
    assert found.status == 200, await found.text()


async def test_the_openai_sdk_raises_on_llama_cpps_error_mid_stream(relay):
    http, token, _ = relay
    client = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key=token, max_retries=0)
    stream = await client.chat.completions.create(
        model="llama-cpp-error", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="failed to decode the batch"):
        async for _ in stream:
            pass
    await client.close()
