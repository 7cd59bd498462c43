"""A Redis that stalls: the in-process buckets carry on from Redis's levels, and no
request waits on Redis longer than RELAY_REDIS_TIMEOUT.

Redis stalls for real: its process is paused (the socket stays open, nothing
answers), or it answers through a proxy that delays every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as redis

from relay.appkeys import RATE_LIMITER, REDIS
from relay.devservers import RedisServer
from relay.metrics import RATE_LIMIT_LOOP_LAG
from relay.stores.bucket_script import SCRIPT
from relay.stores.buckets import Draw, Level, Mode, Outcome
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import LateBatchError, LoopLagError, RedisBuckets
from relay.stores.redis_clock import RedisClock
from tests.api_calls import bearer, client_with_token
from tests.redis_calls import paused, until


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


async def _draw_waits(http, token: str, every: float, span: float) -> list[float]:
    async def timed() -> float:
        started = time.monotonic()
        await http.get("/v1/me", headers=bearer(token))
        return time.monotonic() - started

    calls = []
    for _ in range(round(span / every)):
        calls.append(asyncio.create_task(timed()))
        await asyncio.sleep(every)
    return list(await asyncio.gather(*calls))


async def test_requests_queued_behind_a_failed_batch_go_in_process_at_once(
    make_client, make_settings, tmp_path
):
    timeout = 0.5
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(
                redis_url=server.url, redis_timeout=timeout, rate_limit_requests_per_minute=1000
            )
        )
        _, token = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        assert await _one_by_one(http, 1, token) == [200]
        client = http.app[REDIS]
        batches = 0
        evalsha = client.evalsha

        async def counted(*args):
            nonlocal batches
            batches += 1
            return await evalsha(*args)

        client.evalsha = counted
        # The link's probe runs the script too, a second after the loss: on a busy
        # machine the burst can outlast that. Its calls are not requests' batches.
        probes = 0
        probe = limiter.link._probe

        async def counted_probe():
            nonlocal probes
            probes += 1
            return await probe()

        limiter.link._probe = counted_probe
        with paused(server):
            waits = await _draw_waits(http, token, every=0.02, span=timeout * 1.2)
            sent = batches - probes
        await until(lambda: limiter.link.up)

    # One batch met the hung Redis; the requests that queued behind it did not try
    # it again, so none waited for two batches (generous bound: two would be 2x).
    assert sent == 1
    assert max(waits) < timeout * 1.5, max(waits)


@asynccontextmanager
async def slow_proxy(port: int, delay: float) -> AsyncIterator[int]:
    """A TCP proxy to Redis that delivers every byte `delay` seconds late, each way."""
    loop = asyncio.get_running_loop()
    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Future[None]] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            loop.call_at(loop.time() + delay, writer.write, data)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = loop.create_future()
        handlers.append(done)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writers.extend((writer, up_writer))
        with contextlib.suppress(Exception):  # either side closing ends both
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        done.set_result(None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)


async def test_a_call_queued_behind_a_slow_batch_waits_the_timeout_from_its_arrival(tmp_path):
    timeout, one_way = 1.2, 0.5  # a round trip takes 1 s: a batch passes, two in a row cannot
    with RedisServer(tmp_path / "redis") as server:
        async with redis.from_url(server.url) as direct:
            await direct.script_load(SCRIPT)
            clock = RedisClock()
            sent = time.monotonic()
            seconds, micros = await direct.time()
            clock.observe(sent, time.monotonic(), seconds + micros / 1_000_000)
            async with (
                slow_proxy(server.port, one_way) as port,
                redis.from_url(f"redis://127.0.0.1:{port}/0") as slow,
            ):
                await slow.ping()  # connected ahead: the batches pay round trips only
                shared = RedisBuckets(slow, timeout=timeout, clock=clock)
                first = asyncio.create_task(shared.draw([Draw("slow", 10)]))
                await asyncio.sleep(0.05)
                started = time.monotonic()
                with pytest.raises((TimeoutError, LateBatchError)):
                    await shared.draw([Draw("slow", 10)])
                waited = time.monotonic() - started
                await asyncio.gather(first, return_exceptions=True)
                await shared.close()
    assert waited < timeout * 1.35, waited  # without the bound: ~1.95 s, and it passes


async def test_a_batch_relay_itself_was_too_busy_to_send_is_not_blamed_on_redis(redis_url):
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=0.05)
        waiting = asyncio.ensure_future(shared.draw([Draw("busy", 10)]))
        await asyncio.sleep(0)  # queued, its sender not run yet
        time.sleep(0.1)  # noqa: ASYNC251 (relay's loop busy past the deadline, as encoding a large answer)
        with pytest.raises(LoopLagError):
            await waiting
        # Not sent: Redis charged nothing.
        assert await connection.exists("busy") == 0
        await shared.close()


async def test_relay_being_late_keeps_redis_in_use(make_client, make_settings, monkeypatch):
    http = await make_client(make_settings(rate_limit_requests_per_minute=5))
    _, token = await client_with_token(http)
    limiter = http.app[RATE_LIMITER]

    async def late(*args, **kwargs):
        raise LoopLagError("busy")

    monkeypatch.setattr(limiter._redis, "draw", late)
    before = RATE_LIMIT_LOOP_LAG._value.get()
    assert await _one_by_one(http, 6, token) == [200] * 5 + [429]  # limited in-process
    assert limiter.link.up
    assert RATE_LIMIT_LOOP_LAG._value.get() - before == 6  # and counted, for the operator


async def test_a_charge_in_a_batch_relay_was_late_for_goes_in_the_next(redis_url):
    """An answer's usage charge queued for a batch relay's loop was too late to send is
    sent again, not left to this process's buckets (which Redis's next word overwrites)."""
    failed: list[BaseException] = []
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=0.05)
        shared.charge([Draw("usage", 1000, 600, Mode.DEBIT)], failed.append)
        waiting = asyncio.ensure_future(shared.draw([Draw("check", 10)]))
        await asyncio.sleep(0)  # queued, its sender not run yet
        time.sleep(0.1)  # noqa: ASYNC251 (relay's loop busy past the deadline)
        with pytest.raises(LoopLagError):
            await waiting
        await shared.close()  # waits for the batch in flight
        assert 400 <= float(await connection.hget("usage", "l")) < 401
        assert failed == []


async def test_a_call_queued_behind_a_batch_redis_was_slow_on_blames_redis(tmp_path):
    timeout, one_way = 1.0, 0.45  # a round trip of 0.9 s: the second call's time is gone
    with RedisServer(tmp_path / "redis") as server:
        async with (
            redis.from_url(server.url) as direct,
            slow_proxy(server.port, one_way) as port,
            redis.from_url(f"redis://127.0.0.1:{port}/0") as slow,
        ):
            await slow.ping()
            shared = RedisBuckets(slow, timeout=timeout)
            # The script and Redis's clock, read ahead and closely (not through the delay).
            loading = RedisBuckets(direct, timeout=timeout, clock=shared.clock)
            await loading.load()
            first = asyncio.create_task(shared.draw([Draw("slow", 10)]))
            await asyncio.sleep(0.05)
            # relay's loop was idle all along: Redis is to blame (and is taken for down).
            with pytest.raises(LateBatchError):
                await shared.draw([Draw("slow", 10)])
            assert (await first).allowed
            await shared.close()
