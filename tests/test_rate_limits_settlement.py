"""An answer's usage settles its chat's reservation by the limits in force as it ends."""

from __future__ import annotations

import asyncio

from aiohttp import web

from relay.appkeys import CLIENT_CACHE, RATE_LIMITER
from relay.services.rate_verdicts import Reservation
from relay.stores.redis_buckets import RedisBuckets
from tests.api_calls import ADMIN, bearer, client_with_token
from tests.rate_limit_calls import completion_body, token_gate, token_refusal
from tests.redis_calls import redis_away

USED = 5_000


async def test_a_limit_lowered_while_an_answer_runs_charges_it_by_the_new_limit(
    make_client, make_settings, provider_upstream
):
    """By the old limit of 60,000 a minute its usage of 5,000 left plenty; by the new one
    of 100 it is some fifty minutes' debt, and the next chat is refused."""
    release = asyncio.Event()

    async def respond(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(body=completion_body(USED), content_type="application/json")

    upstream = await provider_upstream(respond, "held")
    settings = make_settings(rate_limit_tokens_per_minute=60_000, upstreams=(upstream,))
    http = await make_client(settings)
    client, token = await client_with_token(http)
    chat = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}
    held = asyncio.ensure_future(
        http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    )
    await asyncio.sleep(0.2)
    assert not held.done()
    patched = await http.patch(
        f"/admin/clients/{client['id']}", json={"limits": {"tokens_per_minute": 100}}, headers=ADMIN
    )
    assert patched.status == 200, await patched.text()
    await asyncio.sleep(0.1)  # the change is notified
    release.set()
    assert (await held).status == 200

    for _ in range(50):  # the debit follows the answer
        refused = await token_gate(http, token)
        if refused.status == 429:
            break
        await asyncio.sleep(0.02)
    assert refused.status == 429, await refused.text()
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(refused.headers["Retry-After"]) > 45 * 60


async def test_usage_settled_while_redis_is_away_is_charged_there_once_it_is_back(
    make_client, make_settings
):
    """This process's buckets take it at once; Redis, shared by every instance, is
    charged it when its link comes back, rather than forgiving it."""
    http = await make_client(make_settings(rate_limit_tokens_per_minute=1_000))
    client, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])
    verdict = await limiter.check_client(row, chat=True, reserve=500)
    assert verdict.reservation == Reservation(500, in_redis=True)
    limiter.link.retry = 0.01  # Redis is there all along: the probe brings it back soon
    limiter.link.lost(ConnectionError("Redis went away"))
    limiter.charges.settle(row, 3_000, verdict.reservation)  # 2,500 past the reservation
    assert limiter.local.owed == 1

    for _ in range(100):
        if limiter.link.up:
            break
        await asyncio.sleep(0.01)
    assert limiter.link.up
    assert limiter.local.owed == 0
    await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)  # the debit goes as a charge
    refused = await token_gate(http, token)
    assert refused.status == 429, await refused.text()  # some 2,000 in debt, in Redis
    assert int(refused.headers["Retry-After"]) > 100


async def test_usage_owed_to_redis_is_charged_by_the_limit_in_force_once_it_is_back(
    make_client, make_settings
):
    """Owed 5,000 while Redis was away, then the limit lowered from 60,000 to 100 before
    Redis came back: charged by the old limit, the debt was capped at and refilled by
    60,000 (so the next check, by 100, found the bucket full); by the new one it is some
    fifty minutes' debt, and the next chat is refused."""
    settings = make_settings(rate_limit_tokens_per_minute=60_000, rate_limit_chat_per_minute=100)
    http = await make_client(settings)
    client, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])
    verdict = await limiter.check_client(row, chat=True)
    back = redis_away(limiter)
    limiter.charges.settle(row, USED, verdict.reservation)
    assert limiter.local.owed == 1
    patched = await http.patch(
        f"/admin/clients/{client['id']}", json={"limits": {"tokens_per_minute": 100}}, headers=ADMIN
    )
    assert patched.status == 200, await patched.text()
    back.set()

    refused = await token_refusal(http, token)
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(refused.headers["Retry-After"]) > 45 * 60
