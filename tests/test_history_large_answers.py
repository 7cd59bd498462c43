"""Many large answers ending at once are all committed: their batches close at
BATCH_BYTES and go pipelined, and the connections closed after sending such a batch
(relay.stores.database) never fail the next batch's turn to connect."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from tests.api_calls import bearer, client_with_token
from tests.history_calls import query

STREAMS = 150
ROUNDS = 3
EVENTS = 2000  # of about 370 bytes each: some 740 KB an answer, 11 to a batch


def chunk(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return b"data: " + orjson.dumps({**body, "choices": [choice]}) + b"\n\n"


async def long_answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = chunk({"content": "x" * 200})
    for _ in range(EVENTS):
        await response.write(words)
    await response.write(chunk({}, "stop") + b"data: [DONE]\n\n")
    return response


async def test_large_answers_ending_together_are_all_committed(
    make_settings, make_client, provider_upstream, database_url, caplog
):
    caplog.set_level(logging.INFO)  # relay's own log as it runs: what it warns of, too
    # 150 answers of 740 KB share one event loop with relay and the client: on a busy
    # machine the last provider headers come seconds late (upstream_timeout at the
    # simulator's 5 s). What is tested is the commits, not that timeout.
    upstream = await provider_upstream(long_answer, "long", models={"m": "m"}, timeout_s=60.0)
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    client, token = await client_with_token(http)
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}

    async def ask() -> bytes:
        async with http.post("/v1/chat/completions", json=body, headers=bearer(token)) as answer:
            return (await answer.read())[-60:]

    for _ in range(ROUNDS):
        ends = await asyncio.gather(*[ask() for _ in range(STREAMS)])
        assert [end for end in ends if not end.endswith(b"data: [DONE]\n\n")] == []
    rows = await query(
        database_url,
        "SELECT count(*) AS n FROM messages WHERE client_id = %s AND role = 'assistant'",
        (client["id"],),
    )
    assert rows == [{"n": STREAMS * ROUNDS}]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
