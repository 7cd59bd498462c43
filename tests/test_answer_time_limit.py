"""An answer still coming when relay's longest reading time (RELAY_MAX_ANSWER_SECONDS) runs
out is cut, on every path: the provider's request is closed, the client told so
(answer_too_long), history keeps what came as cut. What relay promises of a conversation
deleted while its first answer streams rests on that bound."""

import asyncio

import orjson
import pytest
from aiohttp import web

from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import query

CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Hi "},"finish_reason":null}]}\n\n'
)
FINISH = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
)
TRICKLE_SECONDS = 0.05
LONGEST = 0.4


async def endless(request: web.Request, hung_up: asyncio.Event) -> web.StreamResponse:
    """A provider that never finishes: a token every TRICKLE_SECONDS (a stream), or a
    body a byte at a time (a whole answer), until relay hangs up."""
    asked = await request.json()
    stream = asked.get("stream", False)
    if asked["model"] == "finished":  # the answer ends, then neither [DONE] nor the end
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(CHUNK + FINISH)
        await asyncio.sleep(LONGEST * 10)
        return response
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if stream else "application/json"}
    )
    await response.prepare(request)
    if not stream:
        await response.write(b'{"id":"c1","object":"chat.completion","choices":[')
    try:
        while True:
            await response.write(CHUNK if stream else b" ")
            await asyncio.sleep(TRICKLE_SECONDS)
    except (ConnectionResetError, asyncio.CancelledError):
        hung_up.set()
        raise


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    hung_up = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await endless(request, hung_up)

    upstream = await provider_upstream(
        handler, "endless", models={"endless": "endless", "finished": "finished"}
    )
    http = await make_client(make_settings(upstreams=(upstream,), max_answer_seconds=LONGEST))
    client, token = await client_with_token(http)
    return http, token, client["id"], hung_up


async def assistant_statuses(database_url: str, client_id: str) -> list[str]:
    rows = await query(
        database_url,
        "SELECT status FROM messages WHERE client_id = %s AND role = 'assistant'",
        (client_id,),
    )
    return [row["status"] for row in rows]


def last_error(raw: bytes, marker: bytes) -> dict:
    return orjson.loads(raw.rsplit(marker, 1)[1])["error"]


async def test_a_stream_past_the_limit_is_cut_and_its_client_told(relay, database_url):
    http, token, client_id, hung_up = relay
    body = {"model": "endless", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    raw = await asyncio.wait_for(response.read(), 10)
    assert raw.startswith(CHUNK) and b"data: [DONE]" not in raw
    error = last_error(raw, b"data: ")
    assert error["code"] == "answer_too_long"
    await asyncio.wait_for(hung_up.wait(), 5)  # the provider's request was closed
    assert await assistant_statuses(database_url, client_id) == ["cut"]


async def test_a_whole_answer_past_the_limit_is_a_504(relay, database_url):
    http, token, client_id, _ = relay
    body = {"model": "endless", "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    await assert_error(response, 504, "answer_too_long")
    # The same answer asked again would run as long: OpenAI's SDKs must not retry it.
    assert response.headers["x-should-retry"] == "false"
    assert await assistant_statuses(database_url, client_id) == ["cut"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_relays_own_chat_cuts_an_answer_past_the_limit_too(relay, database_url, stream):
    http, token, client_id, _ = relay
    body = {"message": "Hi", "model": "endless", "stream": stream}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    if stream:
        raw = await asyncio.wait_for(response.read(), 10)
        assert b"event: message.done" not in raw
        assert last_error(raw, b"event: error\ndata: ")["code"] == "answer_too_long"
    else:
        await assert_error(response, 504, "answer_too_long")
    assert await assistant_statuses(database_url, client_id) == ["cut"]


async def test_an_answer_that_finished_before_the_limit_is_complete(relay, database_url):
    """Its finish_reason came, then nothing (no [DONE], no end) until the limit: the
    answer had ended, as when such a silence outlasts FINISHED_SILENCE_SECONDS."""
    http, token, client_id, _ = relay
    body = {"model": "finished", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert await asyncio.wait_for(response.read(), 10) == CHUNK + FINISH
    assert await assistant_statuses(database_url, client_id) == ["complete"]
