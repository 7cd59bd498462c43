"""Providers that bend the protocol: lingering after [DONE], JSON for a stream, their own
error events, events without end. The client still gets a clear end, and history says
what happened."""

import asyncio

import orjson
import pytest
from aiohttp import web

from relay.upstreams import reply
from tests.api_calls import assert_error, bearer, client_with_token
from tests.conftest import SIMULATOR_KEY
from tests.history_calls import assistant_statuses

CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
)
FINISH = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
ERROR_EVENT = (
    b'data: {"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}\n\n'
)
WHOLE = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
}
LINGER_SECONDS = 3.0


async def _event_stream(request: web.Request, *parts: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    return response


async def provider_chat(request: web.Request) -> web.StreamResponse:
    """The model asked for names the misbehaviour."""
    model = (await request.json())["model"]
    if model == "linger":  # [DONE], then the body stays open
        response = await _event_stream(request, CHUNK, FINISH, DONE)
        await asyncio.sleep(LINGER_SECONDS)
        await response.write_eof()
        return response
    if model == "reset-after-done":  # [DONE], then the connection breaks
        await _event_stream(request, CHUNK, FINISH, DONE)
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    if model == "done-unterminated":  # [DONE] without its blank line, then the end
        response = await _event_stream(request, CHUNK, FINISH, b"data: [DONE]\n")
        await response.write_eof()
        return response
    if model == "silent-after-finish":  # its answer finished, then neither [DONE] nor the end
        response = await _event_stream(request, CHUNK, FINISH)
        await asyncio.sleep(LINGER_SECONDS * 10)  # past the upstream's timeout
        await response.write_eof()
        return response
    if model == "bare-done-unterminated":  # no finish_reason, and [DONE] with no newline
        response = await _event_stream(request, CHUNK, b"data: [DONE]")
        await response.write_eof()
        return response
    if model == "json-error":
        error = {"message": "You exceeded your quota.", "type": "insufficient_quota"}
        return web.json_response({"error": {**error, "param": None, "code": "insufficient_quota"}})
    if model == "leaky-error":  # names relay's account, model id and key, as some do
        key = request.headers["Authorization"].removeprefix("Bearer ")
        message = f"Rate limit reached for leaky-error in organization org-AbC123xyz (key {key})"
        error = {"message": message, "type": "requests", "param": None, "code": "rate_limit"}
        return web.json_response({"error": error}, status=429)
    if model == "vllm-error":  # vLLM's bare error object, no "error" key
        error = {
            "object": "error",
            "message": "This model's maximum context length is 4096 tokens.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
        return web.json_response(error, status=400)
    if model == "string-error":
        return web.json_response({"error": "model is overloaded, try later"}, status=429)
    if model == "json-answer":
        return web.json_response(WHOLE)
    if model == "error-event":  # the provider's own error event, then the end
        response = await _event_stream(request, CHUNK, ERROR_EVENT)
        await response.write_eof()
        return response
    if model == "error-event-then-done":  # its error event, then [DONE] (vLLM ends so)
        response = await _event_stream(request, CHUNK, ERROR_EVENT, DONE)
        await response.write_eof()
        return response
    if model == "endless-event":  # one event that never ends
        response = await _event_stream(request, CHUNK, b'data: {"x":"')
        for _ in range(5):
            await response.write(b"y" * 1024 * 1024)
        await asyncio.sleep(LINGER_SECONDS)
        await response.write_eof()
        return response
    raise web.HTTPNotFound()


MODELS = (
    "linger",
    "silent-after-finish",
    "done-unterminated",
    "bare-done-unterminated",
    "reset-after-done",
    "json-error",
    "json-answer",
    "error-event",
    "error-event-then-done",
    "endless-event",
    "string-error",
    "vllm-error",
)


async def start_relay(make_settings, make_client, provider_upstream, handler, **upstream):
    """relay in front of a provider whose chat completions `handler` answers: its test
    client, a client's token and that client's id."""
    provider = await provider_upstream(handler, "bent", **upstream)
    http = await make_client(make_settings(upstreams=(provider,)))
    client, token = await client_with_token(http)
    return http, token, client["id"]


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    models = {**{model: model for model in MODELS}, "public-name": "leaky-error"}
    return await start_relay(
        make_settings,
        make_client,
        provider_upstream,
        provider_chat,
        models=models,
        timeout_s=LINGER_SECONDS * 4,
    )


async def ask(http, token, model, stream=True):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return await http.post("/v1/chat/completions", json=body, headers=bearer(token))


async def test_done_ends_the_stream_without_waiting_for_the_provider_to_close(relay, database_url):
    http, token, client_id = relay
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await ask(http, token, "linger")
    assert await response.read() == CHUNK + FINISH + DONE
    assert loop.time() - started < LINGER_SECONDS / 2
    assert await assistant_statuses(database_url, client_id) == ["complete"]


async def test_a_done_line_cut_short_of_its_blank_line_still_ends_the_answer(relay, database_url):
    """The provider closed right after `data: [DONE]` and one newline: by the SSE rules
    that event never ended, but the answer did. The client gets the bytes as sent (its
    SDK ends the stream as it would talking to the provider), no error event of relay's."""
    http, token, client_id = relay
    response = await ask(http, token, "done-unterminated")
    assert await response.read() == CHUNK + FINISH + b"data: [DONE]\n"
    response = await ask(http, token, "bare-done-unterminated")
    assert await response.read() == CHUNK + b"data: [DONE]"
    assert await assistant_statuses(database_url, client_id) == ["complete", "complete"]


async def assert_own_chat_completes(http, token, model, stream):
    """relay's own chat, asked of `model`, ends as a complete answer: "Hi"."""
    body = {"message": "Hi", "model": model, "stream": stream}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    assert response.status == 200
    if stream:
        raw = await response.read()
        assert b"event: message.done" in raw and b"event: error" not in raw
    else:
        assert (await response.json())["message"]["content"] == "Hi"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_relays_own_chat_takes_a_done_line_cut_short_as_the_end_too(
    relay, database_url, stream
):
    http, token, client_id = relay
    await assert_own_chat_completes(http, token, "bare-done-unterminated", stream)
    assert await assistant_statuses(database_url, client_id) == ["complete"]


async def test_a_provider_silent_after_the_answer_finished_does_not_hold_the_stream(
    relay, database_url, monkeypatch
):
    """Only a usage chunk and [DONE] may follow a finish_reason, at once: a provider
    that sends neither (nor closes) has ended the answer, which is complete."""
    monkeypatch.setattr(reply, "FINISHED_SILENCE_SECONDS", 0.2)
    http, token, client_id = relay
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await ask(http, token, "silent-after-finish")
    assert await response.read() == CHUNK + FINISH
    for stream in (False, True):
        await assert_own_chat_completes(http, token, "silent-after-finish", stream)
    assert loop.time() - started < LINGER_SECONDS  # not the upstream's 12 s timeout, thrice
    assert await assistant_statuses(database_url, client_id) == ["complete"] * 3


@pytest.mark.parametrize("model", ["error-event", "error-event-then-done"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_relays_own_chat_passes_on_the_providers_error_as_a_failure(
    relay, database_url, stream, model
):
    http, token, client_id = relay
    body = {"message": "Hi", "model": model, "stream": stream}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    if stream:
        raw = await response.read()
        assert b"event: message.done" not in raw
        error = orjson.loads(raw.rsplit(b"event: error\ndata: ", 1)[1])["error"]
    else:
        error = await assert_error(response, 502)
    assert error["code"] == "upstream_error" and "overloaded" in error["message"]
    assert await assistant_statuses(database_url, client_id) == ["failed"]


async def test_json_instead_of_a_stream_is_a_502_carrying_the_providers_message(relay):
    http, token, _ = relay
    response = await ask(http, token, "json-error")
    error = await assert_error(response, 502, "upstream_error")
    assert "You exceeded your quota." in error["message"]
    assert "x-should-retry" not in response.headers  # its own failure, as its 5xx: may pass
    response = await ask(http, token, "json-answer")
    await assert_error(response, 502, "upstream_not_streamed")
    assert response.headers["x-should-retry"] == "false"  # it would answer so again


@pytest.mark.parametrize(
    "model,sent,status",
    [
        # A connection broken after [DONE] leaves the answer complete.
        ("reset-after-done", CHUNK + FINISH + DONE, "complete"),
        # The provider's own error event: no second error event of relay's after it.
        ("error-event", CHUNK + ERROR_EVENT, "failed"),
        # An error event, then [DONE] (vLLM ends so): still a failed answer.
        ("error-event-then-done", CHUNK + ERROR_EVENT + DONE, "failed"),
    ],
)
async def test_the_client_gets_what_the_provider_sent_and_history_how_it_went(
    relay, database_url, model, sent, status
):
    http, token, client_id = relay
    response = await ask(http, token, model)
    assert await response.read() == sent
    assert await assistant_statuses(database_url, client_id) == [status]


async def test_a_whole_answer_that_is_an_error_is_passed_on_and_kept_as_failed(relay, database_url):
    http, token, client_id = relay
    response = await ask(http, token, "json-error", stream=False)
    assert response.status == 200  # as the provider sent it
    assert (await response.json())["error"]["code"] == "insufficient_quota"
    assert await assistant_statuses(database_url, client_id) == ["failed"]


async def test_an_event_without_end_is_cut_not_buffered_forever(relay):
    http, token, _ = relay
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await (await ask(http, token, "endless-event")).read()
    assert loop.time() - started < LINGER_SECONDS / 2
    assert raw.startswith(CHUNK)
    last = orjson.loads(raw.split(b"\n\n")[-2].removeprefix(b"data: "))
    # relay refused it, and says so: the provider did not break off.
    assert last["error"]["code"] == "upstream_too_large"


async def test_a_refusal_whose_error_is_a_string_keeps_its_message(relay):
    http, token, _ = relay
    error = await assert_error(await ask(http, token, "string-error"), 429)
    assert error["message"] == "model is overloaded, try later"


async def test_a_refusal_in_vllms_bare_error_shape_keeps_its_message(relay):
    http, token, _ = relay
    for stream in (False, True):
        error = await assert_error(await ask(http, token, "vllm-error", stream=stream), 400)
        assert error["message"] == "This model's maximum context length is 4096 tokens."
        assert error["type"] == "BadRequestError"


async def test_a_refusal_does_not_show_relays_account_key_or_provider_model(relay):
    http, token, _ = relay
    error = await assert_error(await ask(http, token, "public-name"), 429, "rate_limit")
    message = error["message"]
    assert "Rate limit reached for public-name in organization org-[redacted]" in message
    assert SIMULATOR_KEY not in message and "leaky-error" not in message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_relays_own_chat_cuts_an_event_without_end_too(relay, stream):
    http, token, _ = relay
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"message": "Hi", "model": "endless-event", "stream": stream}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    # relay stops reading an event past MAX_EVENT_BYTES, and says it cut the answer.
    if stream:
        raw = await response.read()
        assert b"event: error" in raw and b"upstream_too_large" in raw
    else:
        await assert_error(response, 502, "upstream_too_large")
        # OpenAI's SDKs must not ask again, for as large an answer billed again.
        assert response.headers["x-should-retry"] == "false"
    assert loop.time() - started < LINGER_SECONDS / 2


async def test_a_whole_answer_too_large_is_a_502_the_sdks_do_not_retry(relay, monkeypatch):
    http, token, _ = relay
    monkeypatch.setattr(reply, "MAX_RESPONSE_BYTES", 64)  # the provider's answer is larger
    response = await ask(http, token, "json-answer", stream=False)
    await assert_error(response, 502, "upstream_too_large")
    assert response.headers["x-should-retry"] == "false"
