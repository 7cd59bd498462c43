"""A token charge whose batch Redis ran but whose reply was lost is taken in Redis once.

The reply is lost for real: a proxy passes the script to Redis and closes the
connection as Redis answers, so relay cannot tell whether it ran.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis
import redis.exceptions as redis_errors

from relay.appkeys import CLIENT_CACHE, RATE_LIMITER
from relay.devservers import RedisServer
from relay.services.rate_verdicts import Reservation
from relay.stores.buckets import Draw, Mode
from relay.stores.redis_buckets import RedisBuckets
from tests.api_calls import client_with_token
from tests.redis_calls import paused, reply_cutter, until

SENDER = "relay-rate-limit-batch"  # the name of RedisBuckets' sending task


async def test_a_charge_whose_reply_was_lost_is_taken_in_redis_once(
    make_client, make_settings, redis_url
):
    async with reply_cutter(redis_url) as proxy, redis.from_url(redis_url) as watch:
        http = await make_client(
            make_settings(redis_url=proxy.url, rate_limit_tokens_per_minute=1_000)
        )
        client, _ = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        row = await http.app[CLIENT_CACHE].get(client["id"])
        verdict = await limiter.check_client(row, chat=True, reserve=500)
        assert verdict.reservation == Reservation(500, in_redis=True)

        proxy.cut_next_script()
        limiter.charges.settle(row, 3_000, verdict.reservation)  # 2,500 past the reservation
        await until(lambda: not limiter.link.up)  # Redis took it; relay heard the link break
        assert proxy.cut == 1
        assert not limiter.local.owed  # kept to be sent again, not owed as well
        await until(lambda: limiter.link.up)  # the probe, a second later, carries it again

        [tokens] = await watch.keys("*:tokens")
        level = float(await watch.hget(tokens, "l"))
    # 1,000 - 500 - 2,500, plus a few seconds' refill; charged twice it would be -4,500.
    assert -2_000 <= level < -1_900, level


async def test_a_charge_sent_again_is_skipped_by_its_own_relay_only(redis_url):
    """Each relay marks its own charges: one relay's charge is not taken for another's."""
    failures: list[BaseException] = []
    async with (
        reply_cutter(redis_url) as proxy,
        redis.from_url(proxy.url) as cut,
        redis.from_url(redis_url) as direct,
    ):
        first, second = RedisBuckets(cut, timeout=5.0), RedisBuckets(direct, timeout=5.0)
        await first.load()  # so the reply lost is the script's run, not NOSCRIPT
        proxy.cut_next_script()
        first.charge([Draw("shared", 100, 30, Mode.DEBIT)], failures.append)
        await until(lambda: failures)  # Redis took it, its reply was lost
        second.charge([Draw("shared", 100, 20, Mode.DEBIT)], failures.append)
        await second.close()
        # The next batch carries the charge again: Redis skips it, and takes the check.
        remaining = (await first.draw([Draw("shared", 100)])).levels[0].remaining
        await first.close()
        level = float(await direct.hget("shared", "l"))
    assert [type(exc) for exc in failures] == [redis_errors.ConnectionError]
    # 100 - 30 - 20 - 1, plus the refill since the first charge (one token in 0.6 s: a
    # loaded machine takes a while); charged twice it would be 19.
    assert 49 <= remaining <= 51
    assert 49 <= level < 52


async def test_a_charge_made_while_closing_joins_the_batch_under_way(tmp_path):
    """One sender at a time, closing too: a second one's batch could reach Redis before
    the first's, and its charges' numbers past the mark would make Redis skip those."""
    with RedisServer(tmp_path / "redis") as server:
        async with redis.from_url(server.url) as client, redis.from_url(server.url) as watch:
            buckets = RedisBuckets(client, timeout=5.0)
            await buckets.load()
            buckets.charge([Draw("closing", 100, 10, Mode.DEBIT)], pytest.fail)
            with paused(server):  # Redis slow to answer the batch close() sends
                closing = asyncio.create_task(buckets.close())
                await asyncio.sleep(0.05)
                buckets.charge([Draw("closing", 100, 20, Mode.DEBIT)], pytest.fail)
                await asyncio.sleep(2 * RedisBuckets.CHARGE_DELAY)
                senders = [task for task in asyncio.all_tasks() if task.get_name() == SENDER]
            await closing
            assert len(senders) == 1
            assert 70 <= float(await watch.hget("closing", "l")) < 71
