"""A chat reserves its estimated tokens as it is admitted, so chats sent together see each
other's share; once it ends the reservation is settled to its answer's real usage."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as redis
from aiohttp import web

from relay.appkeys import CLIENT_CACHE, CLIENTS, RATE_LIMITER
from relay.devservers import RedisServer
from relay.durations import go_duration
from relay.services.rate_verdicts import Reservation
from relay.stores.buckets import MAX_DEBT_PERIODS, REFILL_MS, Draw, Level, Mode, Outcome
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets
from relay.upstreams.completion import estimated_tokens
from tests.api_calls import bearer, client_with_token
from tests.rate_limit_calls import UNSERVED_CHAT, completion_body, token_gate

BUDGET = 1000
GATE = estimated_tokens(len(json.dumps(UNSERVED_CHAT)))  # what a token gate reserves
USED = 50  # the total_tokens the held provider reports


def refilled_since(started: float) -> int:
    """What a bucket of BUDGET a minute may have refilled since `started` (monotonic
    time): a bound measured, not assumed, so a busy machine does not fail the test."""
    return math.ceil((time.monotonic() - started) * BUDGET / 60) + 1


def chat(content_bytes: int, model: str = "gpt-sim") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "x" * content_bytes}]}


def reservation(body: dict[str, Any]) -> int:
    return estimated_tokens(len(json.dumps(body)))


def answer(status: int = 200) -> bytes:
    if status != 200:
        return orjson.dumps({"error": {"message": "no", "type": "invalid_request_error"}})
    return completion_body(USED)


async def held_provider(provider_upstream, release: asyncio.Event, status: int = 200):
    """A provider that answers only once `release` is set: its chats stay in flight."""

    async def respond(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(status=status, body=answer(status), content_type="application/json")

    return await provider_upstream(respond, "held")


async def held_relay(make_client, make_settings, provider_upstream, release, **changes):
    upstream = await held_provider(provider_upstream, release, changes.pop("status", 200))
    settings = make_settings(
        rate_limit_tokens_per_minute=BUDGET,
        rate_limit_chat_per_minute=100,
        upstreams=(upstream,),
        **changes,
    )
    http = await make_client(settings)
    _, token = await client_with_token(http)
    return http, token


async def remaining_tokens(http, token: str) -> int:
    """The bucket's level as a token gate finds it, before its own reservation."""
    response = await token_gate(http, token)
    assert response.status == 404, await response.text()
    return int(response.headers["x-ratelimit-remaining-tokens"]) + GATE


async def chunked(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The body with no Content-Length: aiohttp sends it chunked."""
    yield json.dumps(body).encode()


@pytest.fixture(params=["redis", "in-process"])
def backing(request, tmp_path) -> dict[str, Any]:
    """Limits decided in Redis, or in-process as while Redis is away."""
    if request.param == "redis":
        return {}
    return {"redis_url": RedisServer(tmp_path / "no-redis").url}  # nothing listens there


async def test_concurrent_large_chats_are_admitted_only_while_the_budget_lasts(
    make_client, make_settings, provider_upstream, backing
):
    release = asyncio.Event()
    http, token = await held_relay(
        make_client, make_settings, provider_upstream, release, **backing
    )
    body = chat(1200)  # some 310 tokens each: the budget of 1000 admits four
    reserve = reservation(body)
    admitted = -(-BUDGET // reserve)  # each admitted while the bucket is not in debt

    sent = [
        asyncio.ensure_future(http.post("/v1/chat/completions", json=body, headers=bearer(token)))
        for _ in range(10)
    ]
    try:
        refused = []
        for _ in range(200):  # the refusals come back at once; the rest are held
            refused = [task for task in sent if task.done()]
            if len(refused) >= 10 - admitted:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # no more refusals come
        refused = [task.result() for task in sent if task.done()]
        assert len(refused) == 10 - admitted
        for response in refused:
            assert response.status == 429
            assert (await response.json())["error"]["type"] == "tokens"
            assert response.headers["x-ratelimit-remaining-tokens"] == "0"
    finally:
        release.set()
        responses = await asyncio.gather(*sent)
    assert sorted(response.status for response in responses) == [200] * admitted + [429] * (
        10 - admitted
    )
    assert (http.app[RATE_LIMITER].link.up) == (not backing)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_chat_holds_its_reservation_until_settled_to_its_real_usage(
    make_client, make_settings, provider_upstream, backing, framing
):
    """A chunked body reserves once read what a Content-Length reserves at admission."""
    release = asyncio.Event()
    http, token = await held_relay(
        make_client, make_settings, provider_upstream, release, **backing
    )
    body = chat(2000)
    reserve = reservation(body)
    assert reserve > 10 * USED

    started = time.monotonic()
    sent = {"json": body} if framing == "content-length" else {"data": chunked(body)}
    headers = {**bearer(token), "Content-Type": "application/json"}
    held = asyncio.ensure_future(http.post("/v1/chat/completions", headers=headers, **sent))
    await asyncio.sleep(0.2)
    assert not held.done()
    # While its answer is awaited, its estimate is out of the bucket.
    remaining = await remaining_tokens(http, token)
    assert BUDGET - reserve <= remaining <= BUDGET - reserve + refilled_since(started)
    release.set()
    response = await held
    assert response.status == 200, await response.text()
    assert (await response.json())["usage"]["total_tokens"] == USED

    await asyncio.sleep(0.1)  # the settlement follows the answer
    # The reservation was given back: the answer cost what it used.
    remaining = await remaining_tokens(http, token)
    assert BUDGET - USED <= remaining <= BUDGET - USED + refilled_since(started)


async def test_an_answer_the_provider_refused_leaves_the_bucket_where_it_was(
    make_client, make_settings, provider_upstream, backing
):
    release = asyncio.Event()
    http, token = await held_relay(
        make_client, make_settings, provider_upstream, release, status=400, **backing
    )
    body = chat(8000)  # estimated at twice the budget: it reserves the whole budget
    assert reservation(body) > BUDGET

    held = asyncio.ensure_future(
        http.post("/v1/chat/completions", json=body, headers=bearer(token))
    )
    await asyncio.sleep(0.2)
    emptied = await token_gate(http, token)
    # Held: all reserved, and no more than all (a gate passes at zero, not in debt).
    assert emptied.status == 404, await emptied.text()
    assert emptied.headers["x-ratelimit-remaining-tokens"] == "0"
    release.set()
    assert (await held).status == 400

    await asyncio.sleep(0.1)
    assert await remaining_tokens(http, token) == BUDGET


async def test_a_chunked_chat_reserves_as_one_with_a_content_length(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_tokens_per_minute=BUDGET))
    _, token = await client_with_token(http)

    response = await http.post(
        "/v1/chat/completions",
        data=chunked(UNSERVED_CHAT),
        headers={**bearer(token), "Content-Type": "application/json"},
    )

    assert response.status == 404, await response.text()
    # What is left after its own reservation, as a token gate with a Content-Length shows,
    # and when the bucket is full again (it was full before).
    assert response.headers["x-ratelimit-remaining-tokens"] == str(BUDGET - GATE)
    refill_ms = math.ceil(GATE * REFILL_MS / BUDGET)
    assert response.headers["x-ratelimit-reset-tokens"] == go_duration(refill_ms)
    await asyncio.sleep(0.1)
    assert await remaining_tokens(http, token) == BUDGET  # no answer: given back


# A reservation is a gate that takes its cost; a settlement gives back, never past
# capacity. (Each call on its own, bucket "r" of 100.)
SETTLEMENTS = [
    [Draw("r", 100, 70, Mode.GATE)],  # 30 left
    [Draw("r", 100, 70, Mode.GATE)],  # passes at 30, down to -40
    [Draw("r", 100, 1, Mode.GATE)],  # refused: in debt
    [Draw("r", 100, -60, Mode.DEBIT)],  # 20
    [Draw("r", 100, -500, Mode.DEBIT)],  # full, not 520
    [Draw("r", 100, 0, Mode.GATE)],
    [Draw("r", 100, 10**17, Mode.DEBIT)],  # a provider's absurd usage: a day's debt at most
    [Draw("r", 100, -(10**17), Mode.DEBIT)],  # full
]


async def test_local_buckets_settle_reservations_as_the_redis_script_does(redis_url):
    local = LocalBuckets(clock=lambda: 0.0)  # no refill between calls
    async with redis.from_url(redis_url) as connection:
        await connection.delete("r")
        shared = RedisBuckets(connection, timeout=5.0)
        in_redis = [await shared.draw(draws) for draws in SETTLEMENTS]
        await shared.close()
    in_process = [local.draw(draws) for draws in SETTLEMENTS]

    for outcomes in (in_redis, in_process):
        assert [outcome.allowed for outcome in outcomes] == [True, True, False] + [True] * 5
        # Redis's clock moves on between calls: a millisecond refills some 0.002 tokens.
        levels = [outcome.levels[0].remaining for outcome in outcomes]
        assert levels == [30, -40, -40, 20, 100, 100, -100 * MAX_DEBT_PERIODS, 100]
    assert len(local) == 0  # full again: nothing kept


async def test_an_answer_is_charged_its_usage_as_if_taken_at_admission(
    make_client, make_settings, provider_upstream, backing
):
    """The reservation is settled by the usage in one charge, as if the usage had been
    taken when the chat was admitted (OpenAI's limits count a request then): the
    bucket refills meanwhile from where the usage leaves it."""
    budget, used = 60_000, 5_000  # 1,000 tokens refilled a second

    async def respond(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(1.8)  # the reservation (about 2,000) refills meanwhile
        whole = orjson.loads(answer())
        whole["usage"] = {"prompt_tokens": used - 1, "completion_tokens": 1, "total_tokens": used}
        return web.Response(body=orjson.dumps(whole), content_type="application/json")

    upstream = await provider_upstream(respond, "slow")
    settings = make_settings(rate_limit_tokens_per_minute=budget, upstreams=(upstream,), **backing)
    http = await make_client(settings)
    _, token = await client_with_token(http)
    response = await http.post("/v1/chat/completions", json=chat(8000), headers=bearer(token))
    assert response.status == 200, await response.text()
    await asyncio.sleep(0.05)
    refilled = 1_800  # about, in the 1.8 s the answer took
    assert abs(await remaining_tokens(http, token) - (budget - used + refilled)) <= 300


async def test_a_huge_content_length_reserves_at_most_the_budget(make_client, make_settings):
    """Else its reservation, past what Redis's script can write, failed the script, and
    Redis was taken for down for every client."""
    http = await make_client(make_settings(rate_limit_tokens_per_minute=BUDGET))
    _, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    reader, writer = await asyncio.open_connection(http.server.host, http.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 4000000000000000000\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413")
    assert limiter.link.up
    await asyncio.sleep(0.05)
    assert await remaining_tokens(http, token) == BUDGET  # given back: it never ran


async def test_an_answer_settled_while_redis_is_away_is_charged_once(make_client, make_settings):
    """Its reservation, taken in Redis, is in the levels this process carries on from:
    the answer costs what it used beyond it, in one charge (a credit capped at the
    limit, then a debit, would charge it what the bucket refilled meanwhile too)."""
    http = await make_client(make_settings(rate_limit_tokens_per_minute=BUDGET))
    client, _ = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])  # as relay holds it
    started = time.monotonic()
    verdict = await limiter.check_client(row, chat=True, reserve=500)
    assert verdict.reservation == Reservation(500, in_redis=True)
    tokens = limiter._plan_of(row, True).tokens
    # Redis's last word, some 18 s later: refilled to 800. Then Redis goes away.
    limiter.local.remember((tokens,), Outcome(True, (Level(800, 12_000, 0),)))
    limiter.link.lost(ConnectionError("Redis went away"))

    limiter.charges.settle(row, 600, verdict.reservation)  # 100 more than reserved
    level = limiter.local.draw((tokens,)).levels[0].remaining
    assert 700 <= level <= 700 + refilled_since(started)


async def test_a_chat_whose_client_left_while_redis_decided_gives_its_reservation_back(
    make_client, make_settings
):
    """Its batch was sent, so Redis took the reservation; the caller, cancelled, never
    holds it to settle: the batch's answer gives it back."""
    http = await make_client(make_settings(rate_limit_tokens_per_minute=BUDGET))
    client, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENTS].get(client["id"])
    buckets = limiter._redis
    evaluate = buckets._evaluate

    async def answered_after_the_caller_left(*args: Any) -> Any:
        reply = await evaluate(*args)
        admitting.cancel()
        await asyncio.sleep(0)  # the caller's task takes its cancellation
        return reply

    buckets._evaluate = answered_after_the_caller_left  # type: ignore[method-assign]
    started = time.monotonic()
    admitting = asyncio.create_task(limiter.check_client(row, chat=True, reserve=500))
    with pytest.raises(asyncio.CancelledError):
        await admitting
    buckets._evaluate = evaluate  # type: ignore[method-assign]
    await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)  # the credit goes as a charge
    assert await remaining_tokens(http, token) >= BUDGET - refilled_since(started)
