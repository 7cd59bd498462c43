"""Streamed chat completions: bytes through unchanged, ends, cuts and departures."""

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from relay.simulator import completion_text
from tests.api_calls import bearer, client_with_token, post_and_never_read
from tests.history_calls import assistant_statuses

MESSAGES = [{"role": "user", "content": "Say hello"}]


def events(raw: bytes) -> list[bytes]:
    return [line[len(b"data: ") :] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]


def content_of(raw: bytes) -> str:
    text = []
    for data in events(raw):
        if data == b"[DONE]":
            continue
        chunk = orjson.loads(data)
        for choice in chunk.get("choices") or []:
            text.append(choice["delta"].get("content") or "")
    return "".join(text)


@pytest.fixture
async def token(http):
    _, token = await client_with_token(http)
    return token


async def stream(http, token, timeout=None, **extra):
    body = {"model": "gpt-sim", "messages": MESSAGES, "stream": True, **extra}
    return await http.post(
        "/v1/chat/completions", json=body, headers=bearer(token), timeout=timeout
    )


async def test_stream_arrives_with_sse_headers_and_ends_with_done(http, token, simulator):
    response = await stream(http, token)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "X-Request-Id" in response.headers
    raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert content_of(raw) == completion_text(simulator.config.tokens)


async def test_usage_chunk_only_when_asked(http, token):
    plain = await (await stream(http, token)).read()
    assert all(b'"usage":{' not in data for data in events(plain))
    asked = await (await stream(http, token, stream_options={"include_usage": True})).read()
    usage_chunks = [orjson.loads(d) for d in events(asked) if d != b"[DONE]" and b'"usage":{' in d]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []


# A provider whose events are split across chunks in awkward places, with
# comments, CRLF line ends, spaces after separators and [DONE] split in two.
AWKWARD_CHUNKS = [
    b": keep-alive\n\n",
    b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel',
    b"lo \xc3",
    b'\xa9t\xc3\xa9"}, "finish_reason": null}]}\r\n\r\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" [DONE] is a word"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n',
    b"\ndata: [DO",
    b"NE]\n\n",
]


@pytest.fixture
async def awkward_provider(aiohttp_server):
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in AWKWARD_CHUNKS:
            await response.write(chunk)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return await aiohttp_server(app)


async def test_bytes_reach_the_client_exactly_as_the_provider_sent_them(
    make_settings, make_client, simulator, awkward_provider
):
    upstream = simulator.upstream(name="awkward", base_url=str(awkward_provider.make_url("/v1")))
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    response = await stream(http, token)
    assert await response.read() == b"".join(AWKWARD_CHUNKS)


async def test_a_provider_breaking_off_ends_the_stream_with_an_error_event(http, token, simulator):
    simulator.config.cut_after = 3
    raw = await (await stream(http, token)).read()
    assert b"[DONE]" not in raw
    last = orjson.loads(events(raw)[-1])
    assert last["error"]["code"] == "upstream_cut"
    assert content_of(b"\n\n".join(b"data: " + e for e in events(raw)[:-1])) == completion_text(3)


async def test_a_client_leaving_closes_the_provider_request(http, token, simulator):
    simulator.config.tokens = 500
    simulator.config.token_delay = 0.02
    response = await stream(http, token)
    await response.content.readany()
    response.close()
    await simulator.state.wait_for(lambda state: state.streams_disconnected == 1, timeout=5)
    assert simulator.state.streams_completed == 0


async def test_a_client_that_stops_reading_is_cut_off(http, token, simulator, monkeypatch):
    # It never leaves, but takes no bytes: relay must not hold its stream, and the
    # provider's, for as long as the connection lives.
    monkeypatch.setattr("relay.upstreams.pipe.SEND_SECONDS", 0.5)
    simulator.config.tokens = 200_000
    simulator.config.token_delay = 0
    body = orjson.dumps({"model": "gpt-sim", "messages": MESSAGES, "stream": True})
    sock = await post_and_never_read(http, "/v1/chat/completions", token, body)
    try:
        # Not reading: relay's buffers fill, then it gives up and closes the provider request.
        await simulator.state.wait_for(lambda state: state.streams_disconnected == 1, timeout=20)
    finally:
        sock.close()
    assert simulator.state.streams_completed == 0


async def test_a_client_leaving_before_the_first_byte_closes_the_provider_request(
    http, token, simulator
):
    simulator.config.first_byte_delay = 0.5
    with pytest.raises(asyncio.TimeoutError):
        await stream(http, token, timeout=aiohttp.ClientTimeout(total=0.1))
    # The provider's connection closes while it is still thinking (a real one
    # stops generating then); the simulator's handler is cancelled mid-wait.
    await simulator.state.wait_for(lambda state: state.abandoned == 1, timeout=5)
    assert simulator.state.streams_open == simulator.state.streams_completed == 0


async def test_a_provider_stalling_mid_stream_is_cut_after_its_timeout(
    make_settings, make_client, simulator
):
    http = await make_client(make_settings(upstreams=(simulator.upstream(timeout_s=0.3),)))
    _, token = await client_with_token(http)
    simulator.config.tokens = 4
    simulator.config.token_delay = 2.0  # far longer than the provider may stay silent
    started = asyncio.get_running_loop().time()
    raw = await (await stream(http, token)).read()
    waited = asyncio.get_running_loop().time() - started
    assert b"[DONE]" not in raw
    # Said as what it was: the provider fell silent, not that it broke off.
    error = orjson.loads(events(raw)[-1])["error"]
    assert (error["code"], error["message"]) == (
        "upstream_timeout",
        "The provider stopped answering.",
    )
    assert waited < 1.5, waited  # the silence was cut short, not waited out
    await simulator.state.wait_for(lambda state: state.streams_disconnected == 1, timeout=5)


async def test_a_provider_sending_slower_than_its_timeout_overall_is_not_cut(
    make_settings, make_client, simulator
):
    """The timeout bounds each silence, not the whole answer."""
    http = await make_client(make_settings(upstreams=(simulator.upstream(timeout_s=0.3),)))
    _, token = await client_with_token(http)
    simulator.config.tokens = 8
    simulator.config.token_delay = 0.1  # 0.8 s in all, never 0.3 s of silence
    raw = await (await stream(http, token)).read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert content_of(raw) == completion_text(8)


@pytest.fixture(params=["silent", "hangs up"])
async def quiet_provider(request, make_settings, make_client, provider_upstream):
    """relay in front of a provider that sends its headers at once, then nothing (a
    long prefill, a hung worker), or hangs up: (behaviour, http, client id, token)."""
    behaviour = request.param

    async def headers_only(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if behaviour == "silent":
            await asyncio.sleep(30)
        else:
            request.transport.close()
        return response

    upstream = await provider_upstream(headers_only, "quiet", models={"q": "q"}, timeout_s=0.3)
    http = await make_client(make_settings(upstreams=(upstream,)))
    client, token = await client_with_token(http)
    return behaviour, http, client["id"], token


async def test_a_stream_whose_provider_sends_no_byte_is_a_whole_error_not_a_200(
    quiet_provider, database_url
):
    # The client had only a 200 and a final error event, which OpenAI's SDKs raise
    # without a status; it now gets the error itself, 504 or 502, as for a whole answer.
    behaviour, http, client_id, token = quiet_provider
    body = {"model": "q", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    status, code = (504, "upstream_timeout") if behaviour == "silent" else (502, "upstream_cut")
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == code
    expected = "failed" if behaviour == "silent" else "cut"
    assert await assistant_statuses(database_url, client_id) == [expected]


async def test_relays_own_stream_is_answered_at_once_and_says_why_it_ended(
    quiet_provider, database_url
):
    # /v1/chat answers at once so that its pings keep proxies from closing the
    # connection while a slow model thinks; a provider silent from the start is then
    # an error event naming the timeout, not a "broke off".
    behaviour, http, client_id, token = quiet_provider
    body = {"model": "q", "stream": True, "message": "hi"}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    raw = await response.read()
    assert response.status == 200
    code = "upstream_timeout" if behaviour == "silent" else "upstream_cut"
    assert b"event: error" in raw and code.encode() in raw
    assert await assistant_statuses(database_url, client_id) == ["cut"]
