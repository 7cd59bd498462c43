"""A Redis that stalls: the in-process buckets carry on from Redis's levels, and no
request waits on Redis longer than RELAY_REDIS_TIMEOUT.

Redis stalls for real: its process is paused (the socket stays open, nothing
answers), or it answers through a proxy that delays every byte.
"""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from relay.appkeys import RATE_LIMITER
from relay.devservers import RedisServer
from relay.stores.buckets import Draw, Level, Mode, Outcome
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets
from tests.api_calls import bearer, client_with_token
from tests.test_rate_limit_late_batches import paused, until


async def _one_by_one(http, count: int, token: str) -> list[int]:
    return [(await http.get("/v1/me", headers=bearer(token))).status for _ in range(count)]


async def test_a_brief_stall_carries_each_client_on_from_its_level_in_redis(
    make_client, make_settings, tmp_path
):
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(redis_url=server.url, redis_timeout=0.2, rate_limit_requests_per_minute=5)
        )
        _, spent = await client_with_token(http)
        _, partly = await client_with_token(http)
        _, fresh = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        assert await _one_by_one(http, 6, spent) == [200] * 5 + [429]
        assert await _one_by_one(http, 3, partly) == [200] * 3

        with paused(server):
            stalled = await _one_by_one(http, 6, spent)
            assert not limiter.link.up
            later = await _one_by_one(http, 6, partly)
            never_seen = await _one_by_one(http, 6, fresh)
        await until(lambda: limiter.link.up)

    # The fallback starts from what each client had left in Redis, not from full.
    assert stalled == [429] * 6
    assert later == [200] * 2 + [429] * 4
    assert never_seen == [200] * 5 + [429]  # only a client Redis never reported starts full


async def test_a_debit_redis_took_is_remembered_for_without_it(redis_url):
    local = LocalBuckets()
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0, on_levels=local.remember)
        shared.charge([Draw("answered", 100, 150, Mode.DEBIT)], pytest.fail)
        await shared.close()
    gate = local.draw([Draw("answered", 100, 0, Mode.GATE)])
    assert not gate.allowed and gate.levels[0].remaining == -50


def test_remembered_levels_age_and_stay_bounded():
    now = [0.0]
    local = LocalBuckets(clock=lambda: now[0], max_buckets=3)
    taken = local.draw([Draw("k", 60)])  # nothing known: full
    for n in range(10):  # Redis reports many clients; only the latest few are kept
        local.remember([Draw(f"other-{n}", 60)], taken)
    assert len(local) == 3
    assert local.draw([Draw("k", 60)]).levels[0].remaining == 59  # "k" was dropped: full

    local.remember([Draw("k", 60)], Outcome(False, (Level(0, 60_000, 1_000),)))
    assert not local.draw([Draw("k", 60)]).allowed
    now[0] += 2_000  # two tokens refilled since Redis said empty
    assert [local.draw([Draw("k", 60)]).allowed for _ in range(3)] == [True, True, False]

    kept = len(local)
    local.remember([Draw("k", 60)], Outcome(True, (Level(60, 0, 0),)))
    assert len(local) == kept - 1  # a full bucket is the same as none: not kept
