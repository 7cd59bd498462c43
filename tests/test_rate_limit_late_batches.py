"""A rate-limit batch Redis runs only after relay gave up on it charges nothing.

Redis is made slow for real: its process is paused, so the batch already sent
waits in its socket and runs the moment Redis is resumed.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as redis

from relay.appkeys import CLIENT_CACHE, RATE_LIMITER
from relay.devservers import RedisServer
from relay.services.rate_verdicts import Reservation
from relay.stores.buckets import Draw, Mode
from relay.stores.redis_buckets import LateBatchError, RedisBuckets
from relay.stores.redis_clock import MAX_DRIFT, RESYNC_AFTER, RedisClock
from tests.api_calls import bearer, client_with_token
from tests.redis_calls import paused, until


async def evalsha_calls(connection: redis.Redis) -> int:
    stats = await connection.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def until_evalsha_calls(connection: redis.Redis, count: int) -> None:
    """Wait until Redis has run `count` scripts in all (a late one included)."""
    deadline = time.monotonic() + 10
    while await evalsha_calls(connection) < count:
        assert time.monotonic() < deadline, "Redis never ran the batch"
        await asyncio.sleep(0.05)


async def test_a_batch_redis_runs_after_relay_gave_up_charges_nothing(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        async with redis.from_url(server.url) as connection, redis.from_url(server.url) as watch:
            shared = RedisBuckets(connection, timeout=0.3)
            assert (await shared.draw([Draw("late", 10)])).levels[0].remaining == 9
            before = await watch.hgetall("late")
            ran = await evalsha_calls(watch)
            failures: list[BaseException] = []

            with paused(server):
                shared.charge([Draw("late", 10, 5, Mode.DEBIT)], failures.append)
                with pytest.raises(TimeoutError):
                    await shared.draw([Draw("late", 10), Draw("late-too", 10)])
            await until_evalsha_calls(watch, ran + 1)

            # Relay decided that batch without Redis; Redis ran it later and left it be.
            assert [type(exc) for exc in failures] == [TimeoutError]
            assert await watch.hgetall("late") == before
            assert not await watch.exists("late-too")
            # And the next batch is decided (and charged) in Redis again, once, with the
            # charge that failed: 9 - 5 - 1.
            assert (await shared.draw([Draw("late", 10)])).levels[0].remaining == 3
            await shared.close()


async def test_requests_decided_without_a_hung_redis_are_not_charged_again_when_it_wakes(
    make_client, make_settings, tmp_path
):
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(redis_url=server.url, redis_timeout=0.2, rate_limit_requests_per_minute=5)
        )
        _, token = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        async with redis.from_url(server.url) as watch:
            assert (await http.get("/v1/me", headers=bearer(token))).status == 200  # 4 left
            ran = await evalsha_calls(watch)

            with paused(server):
                assert (await http.get("/v1/me", headers=bearer(token))).status == 200
                assert not limiter.link.up  # that one was decided in-process
            await until_evalsha_calls(watch, ran + 1)
            await until(lambda: limiter.link.up)

            statuses = [(await http.get("/v1/me", headers=bearer(token))).status for _ in range(6)]
        # Redis woke to that request's batch, too late to charge it; it is charged once,
        # as owed when the link came back: 3 are left there, not 2.
        assert statuses == [200] * 3 + [429] * 3


async def test_a_charge_redis_never_took_goes_with_the_probe_that_brings_it_back(
    make_client, make_settings, tmp_path
):
    """No request after it: the link's probe carries the charge kept from the failed batch."""
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(
                redis_url=server.url, redis_timeout=0.2, rate_limit_tokens_per_minute=1_000
            )
        )
        client, _ = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        row = await http.app[CLIENT_CACHE].get(client["id"])
        verdict = await limiter.check_client(row, chat=True, reserve=500)
        assert verdict.reservation == Reservation(500, in_redis=True)
        async with redis.from_url(server.url) as watch:
            ran = await evalsha_calls(watch)
            with paused(server):
                limiter.charges.settle(row, 3_000, verdict.reservation)  # 2,500 past it
                await until(lambda: not limiter.link.up)
            await until_evalsha_calls(watch, ran + 1)  # woke to it too late: not taken
            assert not limiter.local.owed
            await until(lambda: limiter.link.up)

            [tokens] = await watch.keys("*:tokens")
            level = float(await watch.hget(tokens, "l"))
    # 1,000 - 500 - 2,500, plus a few seconds' refill; never taken it would be 500 or so.
    assert -2_000 <= level < -1_900, level


async def test_a_batch_reaching_redis_past_its_deadline_is_refused_whole(redis_url):
    async with redis.from_url(redis_url) as connection:
        # Redis's clock jumped an hour ahead since relay read it: every deadline has passed.
        clock = RedisClock()
        seconds, micros = await connection.time()
        now = time.monotonic()
        clock.observe(now, now, seconds + micros / 1_000_000 - 3600)
        shared = RedisBuckets(connection, timeout=5.0, clock=clock)
        failures: list[BaseException] = []
        shared.charge([Draw("past", 10, 5, Mode.DEBIT)], failures.append)
        with pytest.raises(LateBatchError):
            await shared.draw([Draw("past", 10)])
        assert not await connection.exists("past")
        assert [type(exc) for exc in failures] == [LateBatchError]
        # The refusal carried Redis's time: the next batch has a deadline it can meet,
        # and carries the charge refused: 10 - 5 - 1.
        assert (await shared.draw([Draw("past", 10)])).levels[0].remaining == 4
        await shared.close()


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def test_the_clock_bound_takes_the_receipt_time_and_loosens_with_age():
    clock = RedisClock()
    assert clock.stale(0.0)
    clock.observe(sent=10.0, received=10.004, redis_seconds=1_000.002)
    # Redis read 1000.002 by 10.004 at the latest: 989.998 s ahead at least, less drift since.
    assert abs(clock.redis_micros(10.004) - micros(1_000.002)) <= 1
    assert abs(clock.redis_micros(11.004) - micros(1_001.002 - MAX_DRIFT)) <= 1
    assert abs(clock.redis_micros(9.004) - micros(999.002 - MAX_DRIFT)) <= 1
    assert not clock.stale(10.004 + RESYNC_AFTER) and clock.stale(10.005 + RESYNC_AFTER)


def test_the_clock_keeps_its_best_reading_and_restarts_when_redis_went_back():
    clock = RedisClock()
    clock.observe(sent=10.0, received=10.002, redis_seconds=1_000.001)  # 989.999 at least
    clock.observe(sent=11.0, received=11.3, redis_seconds=1_001.15)  # read late: 989.85
    assert abs(clock.redis_micros(11.3) - micros(1_001.299 - 1.298 * MAX_DRIFT)) <= 1
    clock.observe(sent=12.0, received=12.0002, redis_seconds=1_002.0001)  # 989.9999: tighter
    assert abs(clock.redis_micros(12.0002) - micros(1_002.0001)) <= 1
    # Redis now reads 5 s earlier than the bound allows (at most 985.0005 ahead): start over.
    clock.observe(sent=13.0, received=13.001, redis_seconds=998.0005)
    assert abs(clock.redis_micros(13.001) - micros(998.0005)) <= 1


async def test_every_draw_and_debit_in_time_is_charged_once(redis_url):
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0)
        ran = await evalsha_calls(connection)
        shared.charge([Draw("once", 100, 30, Mode.DEBIT)], pytest.fail)
        outcomes = await asyncio.gather(*(shared.draw([Draw("once", 100)]) for _ in range(7)))
        await shared.close()
        batches = await evalsha_calls(connection) - ran
        level = float(await connection.hget("once", "l"))
    assert all(outcome.allowed for outcome in outcomes)
    assert sorted(outcome.levels[0].remaining for outcome in outcomes) == list(range(63, 70))
    assert 63 <= level < 63.1  # 30 + 7 taken, each once (plus a sliver of refill)
    assert 1 <= batches < 8
