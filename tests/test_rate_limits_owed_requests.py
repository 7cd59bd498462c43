"""Requests taken in memory while Redis was away are charged there once it is back, so a
recovery hands no client a fresh allowance on top of what it used meanwhile."""

from __future__ import annotations

import asyncio

from relay.appkeys import RATE_LIMITER
from relay.devservers import RedisServer
from relay.stores.buckets import Draw, Mode
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets
from tests.api_calls import bearer, client_with_token
from tests.redis_calls import paused, until


async def _one_by_one(http, count: int, token: str) -> list[int]:
    return [(await http.get("/v1/me", headers=bearer(token))).status for _ in range(count)]


async def test_requests_taken_on_two_instances_while_redis_was_away_are_charged_there(
    make_client, make_settings, tmp_path
):
    """Each instance limits alone while Redis is away (an outage multiplies a client's
    budget by the instances it reaches); once Redis is back each charges it what it took."""
    with RedisServer(tmp_path / "redis") as server:
        settings = make_settings(
            redis_url=server.url, redis_timeout=0.2, rate_limit_requests_per_minute=4
        )
        one, two = await make_client(settings), await make_client(settings)
        _, token = await client_with_token(one)
        assert await _one_by_one(one, 1, token) == [200]  # 3 left, in Redis

        with paused(server):
            # `one` carries on from Redis's word (3 left), `two` never heard it (4).
            during = await _one_by_one(one, 4, token) + await _one_by_one(two, 5, token)
            assert during == [200] * 3 + [429] + [200] * 4 + [429]
            assert not one.app[RATE_LIMITER].link.up and not two.app[RATE_LIMITER].link.up
        for http in (one, two):
            await until(lambda http=http: http.app[RATE_LIMITER].link.up)
        await asyncio.sleep(RedisBuckets.CHARGE_DELAY + 0.05)  # `two`'s goes as a charge

        # Redis is charged the 7 taken meanwhile: 4 in debt, not 3 left.
        refused = await one.get("/v1/me", headers=bearer(token))
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) > 60


def test_a_long_outage_owes_the_drawdown_not_every_request_taken():
    """Redis refills over the outage as this process's bucket does: what it is owed is
    how far this process's bucket stands below where it would be untouched."""
    now = [0.0]
    local = LocalBuckets(clock=lambda: now[0])
    draw = Draw("k", 60)  # one a second
    for _ in range(3_600):  # an hour at its limit, after a burst of all it had
        while local.draw([draw], owed=1).allowed:
            pass
        now[0] += 1_000
    assert local.owed == 1
    [owed] = local.take_owed()
    # Untouched it would be full; it stands one short of that after the last second's refill.
    assert owed == Draw("k", 60, 59, Mode.DEBIT)
    assert not local.owed and local.take_owed() == ()
