"""An answer the provider failed stays failed when its client leaves on the error."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from relay.appkeys import ANSWER_HOOKS, DATABASE
from relay.stores.clients import ClientStore
from relay.upstreams.completion import CompletionSummary
from tests.api_calls import bearer, client_with_token
from tests.fake_providers import sse_reply
from tests.history_calls import assistant_statuses, recorded_answer
from tests.receipt_calls import fetch_receipt_when_committed
from tests.test_metrics import scrape, value
from tests.test_metrics_outcomes import settled


def event(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(delta: dict[str, str]) -> dict[str, object]:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice]}


ROLE = event(chunk({"role": "assistant", "content": ""}))
WORDS = event(chunk({"content": "Hel"}))
OVERLOADED = {"message": "The model is overloaded", "type": "server_error", "param": None}
ERROR = event({"error": {**OVERLOADED, "code": None}})
HELLO = [{"role": "user", "content": "hi"}]


async def relay_before(make_settings, make_client, provider_upstream, *parts, linger):
    """relay in front of a provider (model "m") that sends `parts`, then ends its body
    `linger` seconds later: (http, client id, token)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = await sse_reply(request, *parts, end=False)
        await asyncio.sleep(linger)
        await response.write_eof()
        return response

    upstream = await provider_upstream(chat, "fake", models={"m": "m"})
    http = await make_client(make_settings(upstreams=(upstream,)))
    client, token = await client_with_token(http)
    return http, client["id"], token


@pytest.fixture(params=[0.01, 0.5, 30.0], ids=["ends-10ms-later", "ends-0.5s-later", "stays-open"])
async def failing_provider(request, make_settings, make_client, provider_upstream):
    """relay in front of a provider that sends a word, then an error event, then ends its
    body after the param's seconds."""
    return await relay_before(
        make_settings, make_client, provider_upstream, ROLE, WORDS + ERROR, linger=request.param
    )


async def recorded_statuses(database_url, client_id) -> list[str]:
    """The client's answers' statuses, once one is recorded (a client that left has its
    answer committed in the background)."""
    for _ in range(100):
        if statuses := await assistant_statuses(database_url, client_id):
            return statuses
        await asyncio.sleep(0.05)
    return []


async def outcomes(http) -> dict[str, float]:
    text = await scrape(http)
    return {
        outcome: value(text, "relay_answers_total", outcome=outcome)
        for outcome in ("failed", "cancelled")
    }


async def assert_recorded_failed(http, database_url, client_id, token, receipt_id, before):
    receipt = await fetch_receipt_when_committed(http, token, receipt_id)
    assert receipt["status"] == "failed"
    assert await recorded_statuses(database_url, client_id) == ["failed"]
    assert await settled(http, "relay_answers_total", before["failed"], outcome="failed") == (
        before["failed"] + 1
    )
    assert (await outcomes(http))["cancelled"] == before["cancelled"]
    return receipt


async def read_then_leave(http, token, path, body, until: bytes) -> tuple[str, bytes]:
    """Stream `body` to `path`, read up to the end of the event holding `until`, then
    close the connection: (the receipt id, the bytes read)."""
    response = await http.post(path, json={**body, "stream": True}, headers=bearer(token))
    assert response.status == 200
    seen = b""
    while until not in seen or not seen.endswith(b"\n\n"):
        seen += await response.content.readany()
    response.close()
    return response.headers["x-receipt-id"], seen


async def test_a_client_leaving_on_the_providers_error_event_records_it_failed(
    failing_provider, database_url
):
    http, client_id, token = failing_provider
    before = await outcomes(http)
    # As OpenAI's SDK does: it raises on the error event and closes its connection.
    body = {"model": "m", "messages": HELLO}
    receipt_id, seen = await read_then_leave(
        http, token, "/v1/chat/completions", body, until=b"overloaded"
    )
    receipt = await assert_recorded_failed(http, database_url, client_id, token, receipt_id, before)
    # Its receipt signs exactly what the client was sent: the word, then the error.
    assert receipt["response_sha256"] == hashlib.sha256(seen).hexdigest()


async def test_the_sdk_raising_on_the_providers_error_event_records_it_failed(
    failing_provider, database_url
):
    http, client_id, token = failing_provider
    before = await outcomes(http)
    sdk = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key=token, max_retries=0)
    try:
        stream = await sdk.chat.completions.create(model="m", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError, match="overloaded"):
            async for _ in stream:
                pass
    finally:
        await sdk.close()
    receipt_id = stream.response.headers["x-receipt-id"]
    await assert_recorded_failed(http, database_url, client_id, token, receipt_id, before)


async def test_a_client_leaving_after_relays_own_stream_saw_the_error_records_it_failed(
    failing_provider, database_url
):
    # /v1/chat tells its client of the error only once the provider's body ends; a
    # client leaving before that leaves an answer its provider had already failed.
    http, client_id, token = failing_provider
    before = await outcomes(http)
    # The provider sends its error with the word, so relay has it once the word is out.
    body = {"model": "m", "message": "hi"}
    receipt_id, _ = await read_then_leave(
        http, token, "/v1/chat", body, until=b"event: message.delta"
    )
    await assert_recorded_failed(http, database_url, client_id, token, receipt_id, before)


async def test_a_client_leaving_an_answer_still_going_well_records_it_cancelled(
    make_settings, make_client, provider_upstream, database_url
):
    http, client_id, token = await relay_before(
        make_settings, make_client, provider_upstream, ROLE, WORDS, linger=30
    )
    before = await outcomes(http)
    body = {"model": "m", "messages": HELLO}
    receipt_id, seen = await read_then_leave(
        http, token, "/v1/chat/completions", body, until=b"Hel"
    )
    receipt = await fetch_receipt_when_committed(http, token, receipt_id)
    assert receipt["status"] == "cancelled"
    assert receipt["response_sha256"] == hashlib.sha256(seen).hexdigest()
    assert await recorded_statuses(database_url, client_id) == ["cancelled"]
    cancelled = await settled(http, "relay_answers_total", before["cancelled"], outcome="cancelled")
    assert cancelled == before["cancelled"] + 1
    assert (await outcomes(http))["failed"] == before["failed"]


async def test_a_client_timing_out_on_a_whole_answer_its_provider_failed_records_it_failed(
    make_settings, make_client, provider_upstream, database_url
):
    # /v1/chat reads the provider's stream even for a whole answer: an error event read
    # before the client gave up is the provider failing it.
    http, client_id, token = await relay_before(
        make_settings, make_client, provider_upstream, ROLE, WORDS + ERROR, linger=30
    )
    before = await outcomes(http)
    body = orjson.dumps({"model": "m", "message": "hi"})
    headers = {**bearer(token), "Content-Type": "application/json"}
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.5):
            await http.post("/v1/chat", data=body, headers=headers)
    assert await recorded_statuses(database_url, client_id) == ["failed"]
    assert await settled(http, "relay_answers_total", before["failed"], outcome="failed") == (
        before["failed"] + 1
    )


@pytest.mark.parametrize(
    ("status", "error", "kept_as"),
    [
        ("complete", None, "cancelled"),  # still going well
        ("complete", {"message": "The model is overloaded"}, "failed"),  # its provider failed it
        ("cut", None, "cut"),  # relay had decided to end it with an error
        ("failed", None, "failed"),
    ],
)
async def test_a_client_leaving_cancels_only_an_answer_still_going_well(
    http, database_url, status, error, kept_as
):
    client = await ClientStore(http.app[DATABASE]).get((await client_with_token(http))[0]["id"])
    answer = recorded_answer(
        http.app, client, "left", status=status, summary=CompletionSummary(error=error)
    )
    http.app[ANSWER_HOOKS].client_left(answer, 1.0)
    assert await recorded_statuses(database_url, client.id) == [kept_as]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": HELLO, "stream": True}),
        ("/v1/chat", {"model": "m", "message": "hi", "stream": True}),
    ],
)
async def test_a_client_leaving_as_its_stream_begins_records_it_cancelled_quietly(
    make_settings, make_client, provider_upstream, database_url, monkeypatch, caplog, path, body
):
    # The client's connection closes just as relay sends the stream's head, before
    # aiohttp's cancellation of the handler arrives: the head cannot be written. That
    # was an "unhandled error" logged with its traceback, and the answer a 500.
    http, client_id, token = await relay_before(
        make_settings, make_client, provider_upstream, ROLE, WORDS, linger=30
    )
    prepare = web.StreamResponse.prepare

    async def closing_first(response: web.StreamResponse, request: web.Request):
        if request.app is http.app and request.path == path and request.transport is not None:
            request.transport.close()
        return await prepare(response, request)

    monkeypatch.setattr(web.StreamResponse, "prepare", closing_first)
    with pytest.raises(aiohttp.ClientError):
        async with http.post(path, json=body, headers=bearer(token)) as response:
            await response.read()
    assert await recorded_statuses(database_url, client_id) == ["cancelled"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
