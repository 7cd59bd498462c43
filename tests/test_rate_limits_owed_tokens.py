"""Tokens taken in memory while Redis was away are charged there once it is back, net of
the refill Redis made meanwhile: no usage is forgiven, and none the limits allowed punished."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as redis

from relay.appkeys import CLIENT_CACHE, RATE_LIMITER
from relay.devservers import RedisServer
from relay.stores.buckets import Draw, Mode
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets
from tests.api_calls import client_with_token
from tests.rate_limit_calls import token_gate
from tests.redis_calls import paused, redis_away, until

LIMITS = {
    "rate_limit_tokens_per_minute": 1_000,
    "rate_limit_chat_per_minute": 10_000,
    "rate_limit_requests_per_minute": 10_000,
}


async def redis_tokens_level(redis_url: str) -> float:
    async with redis.from_url(redis_url) as watch:
        [tokens] = await watch.keys("*:tokens")
        return float(await watch.hget(tokens, "l"))


async def test_a_client_at_its_token_limit_through_a_long_outage_is_not_left_in_debt(
    make_client, make_settings, redis_url
):
    """Ten minutes at 1,000 tokens a minute, which the in-process bucket allows as it
    refills: Redis, refilling as it does, is owed how far the bucket stands below full
    (900), not the 11,000 used (which left the client ten minutes in debt)."""
    http = await make_client(make_settings(**LIMITS))
    client, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])
    now = [time.monotonic() * 1000]
    limiter.local._clock = lambda: now[0]  # the outage's ten minutes pass at once
    back = redis_away(limiter)

    verdicts = [await limiter.check_client(row, chat=True, reserve=1_000)]
    limiter.charges.settle(row, 1_000, verdicts[-1].reservation)  # a minute's burst
    for _ in range(100):  # then 100 tokens every 6 s: its limit exactly
        now[0] += 6_000
        verdicts.append(await limiter.check_client(row, chat=True, reserve=60))
        limiter.charges.settle(row, 100, verdicts[-1].reservation)  # 40 past its estimate
    assert all(verdict.allowed for verdict in verdicts)
    now[0] += 6_000  # 100 back since the last chat
    back.set()
    await until(lambda: limiter.link.up)
    await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)  # the charges go in a batch

    # 100 left, plus the refill in Redis's real time since: not some 10,000 in debt.
    assert 100 <= await redis_tokens_level(redis_url) < 200
    gate = await token_gate(http, token)
    assert gate.status != 429, await gate.text()


async def test_tokens_taken_during_a_short_outage_are_charged_there_once(
    make_client, make_settings, redis_url
):
    """A chat reserved and settled while Redis was away, and one reserved then but
    settled once it is back: Redis is charged all both used, the open reservation once."""
    http = await make_client(make_settings(**LIMITS))
    client, _ = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])
    back = redis_away(limiter)

    open_one = await limiter.check_client(row, chat=True, reserve=500)
    settled = await limiter.check_client(row, chat=True, reserve=200)
    limiter.charges.settle(row, 700, settled.reservation)
    back.set()
    await until(lambda: limiter.link.up)
    limiter.charges.settle(row, 2_000, open_one.reservation)
    await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)

    # 1,000 - 700 - 2,000, plus a moment's refill: the open reservation charged twice
    # it would be -2,200; forgiven, -1,200 or more.
    assert -1_700 <= await redis_tokens_level(redis_url) < -1_650


async def test_a_reservation_redis_held_settled_for_less_while_away_is_given_back(
    make_client, make_settings, redis_url
):
    """Reserved 800 in Redis, used 100, settled while Redis was away: Redis gets the 700
    back once it returns, as it would have had it been there."""
    http = await make_client(make_settings(**LIMITS))
    client, _ = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]
    row = await http.app[CLIENT_CACHE].get(client["id"])
    verdict = await limiter.check_client(row, chat=True, reserve=800)  # in Redis: 200 left
    back = redis_away(limiter)
    limiter.charges.settle(row, 100, verdict.reservation)
    back.set()
    await until(lambda: limiter.link.up)
    await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)

    # 1,000 - 100, plus a moment's refill; the credit lost it would be some 200.
    assert 900 <= await redis_tokens_level(redis_url) < 950


async def test_a_charge_that_went_as_redis_went_away_leaves_the_usage_after_it_owed(
    make_client, make_settings, tmp_path
):
    """The probe that brings Redis back carries the charge its batch failed on; Redis's
    word for that bucket, which lacks what was taken meanwhile, is not taken for it."""
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(make_settings(redis_url=server.url, redis_timeout=0.2, **LIMITS))
        client, _ = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        row = await http.app[CLIENT_CACHE].get(client["id"])
        first = await limiter.check_client(row, chat=True, reserve=500)  # in Redis
        with paused(server):
            limiter.charges.settle(row, 3_000, first.reservation)  # its batch fails
            await until(lambda: not limiter.link.up)
            during = await limiter.check_client(row, chat=True, reserve=200)
            limiter.charges.settle(row, 400, during.reservation)
        await until(lambda: limiter.link.up)
        await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)

        # 1,000 - 3,000 - 400, plus a few seconds' refill; without the 400, -2,000.
        assert -2_400 <= await redis_tokens_level(server.url) < -2_300


def test_what_is_charged_here_alone_during_an_outage_is_not_owed():
    """A reservation taken here alone (relay's loop too late for Redis) is given back
    here and its usage owed: Redis is owed the usage, no less for the give-back."""
    local = LocalBuckets(clock=lambda: 0.0)
    local.draw([Draw("k", 1_000, 300, Mode.GATE)])  # here alone, before the outage
    local.draw([Draw("k", 1_000, 100, Mode.DEBIT)], owed=1)  # another chat's, owed
    local.draw([Draw("k", 1_000, -300, Mode.DEBIT)])  # the first given back here...
    local.draw([Draw("k", 1_000, 500, Mode.DEBIT)], owed=1)  # ...and its usage owed
    assert local.take_owed() == (Draw("k", 1_000, 600, Mode.DEBIT),)


def test_what_was_owed_before_a_limit_changed_during_an_outage_stays_owed():
    """5,000 owed by a limit of 60,000 a minute, then lowered to 100 and a chat reserving
    18 by it: the bucket, by 100, stands full before that chat, but the 5,000 stay owed
    (to be charged by the limit in force once Redis is back)."""
    local = LocalBuckets(clock=lambda: 0.0)
    local.draw([Draw("k", 60_000, 5_000, Mode.DEBIT)], owed=1)
    local.draw([Draw("k", 100, 18, Mode.GATE)], owed=1)
    assert local.take_owed() == (Draw("k", 100, 5_018, Mode.DEBIT),)
