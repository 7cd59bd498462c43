"""Without Redis relay keeps serving and keeps limiting, then goes back to Redis by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from relay.appkeys import RATE_LIMITER
from relay.devservers import RedisServer
from tests.api_calls import bearer, client_with_token
from tests.redis_calls import until

LINK_LOGGER = "relay.services.redis_link"


async def _burst(http, count: int, token: str) -> list[int]:
    responses = await asyncio.gather(
        *(http.get("/v1/me", headers=bearer(token)) for _ in range(count))
    )
    return [response.status for response in responses]


async def _keys(url: str) -> list[bytes]:
    async with redis.from_url(url) as connection:
        return list(await connection.keys("relay:rl:*"))


def _count_redis_draws(limiter) -> list[object]:
    """Record every draw that goes to Redis (as opposed to the in-process buckets)."""
    tried: list[object] = []
    real = limiter._redis.draw

    async def counted(draws, extra=(), on_abandoned=None):
        tried.append(draws)
        return await real(draws, extra, on_abandoned)

    limiter._redis.draw = counted
    return tried


async def _scrape(http) -> str:
    return await (await http.get("/metrics")).text()


def _metric(text: str, name: str) -> float:
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def _link_messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LINK_LOGGER]


async def test_redis_stopped_limits_in_process_and_recovers(
    make_client, make_settings, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(redis_url=server.url, rate_limit_requests_per_minute=4)
        )
        _, token = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        assert await _burst(http, 2, token) == [200, 200]
        assert await _keys(server.url)

        server.stop()
        statuses = await _burst(http, 10, token)
        statuses += await _burst(http, 10, token)

        # This instance's own buckets carry on from Redis's last word: 2 of 4 left.
        assert statuses.count(200) == 2
        assert statuses.count(429) == 18
        assert not limiter.link.up
        health = await http.get("/health")
        body = await health.json()
        assert health.status == 200, body
        assert body["status"] == "degraded"
        assert body["checks"]["redis"]["status"] == "degraded"
        assert body["checks"]["postgres"]["status"] == "ok"
        assert _link_messages(caplog) == ["redis unavailable"]  # once per outage
        # For alerts: the outage lasts as long as the gauge says, and the errors
        # go on counting (each failed reconnect), not only the first one.
        assert _metric(await _scrape(http), "relay_redis_up") == 0
        errors = _metric(await _scrape(http), "relay_redis_errors_total")
        for _ in range(100):
            if _metric(await _scrape(http), "relay_redis_errors_total") > errors:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a failed reconnect was not counted")

        server.start()
        await until(lambda: limiter.link.up)
        assert _metric(await _scrape(http), "relay_redis_up") == 1
        statuses = await _burst(http, 10, token)

        # The restarted (empty) Redis is charged the 2 this instance took meanwhile.
        assert statuses.count(200) == 2
        assert await _keys(server.url)
        # Said once Redis has stayed back for a while (RedisLink.settle).
        await until(lambda: len(_link_messages(caplog)) == 2)
        assert _link_messages(caplog) == ["redis unavailable", "redis available again"]
        health = await http.get("/health")
        assert (await health.json())["checks"]["redis"]["status"] == "ok"


async def test_a_hung_redis_costs_requests_at_most_the_timeout(
    make_client, make_settings, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(
                redis_url=server.url,
                redis_timeout=0.2,
                health_timeout=0.3,
                rate_limit_requests_per_minute=5,
            )
        )
        _, token = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        assert await _burst(http, 1, token) == [200]
        tried = _count_redis_draws(limiter)
        pid = server._proc.pid  # paused, not stopped: the socket stays open, nothing answers
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = await _burst(http, 3, token)
            waited = time.monotonic() - started
            rest = [(await _burst(http, 1, token))[0] for _ in range(10)]

            assert not limiter.link.up
            # In-process buckets start from Redis's last word: 4 of 5 left.
            assert (first + rest).count(200) == 4
            # The three that met the hung Redis gave up after its timeout (generous
            # bound: without one they would hang); the ten after never tried it.
            assert waited < 2.0, waited
            assert len(tried) == 3
            health = await http.get("/health")
            assert health.status == 200
            assert (await health.json())["checks"]["redis"]["status"] == "degraded"
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: len(_link_messages(caplog)) == 2)
        assert _link_messages(caplog) == ["redis unavailable", "redis available again"]


async def test_relay_starts_and_limits_without_redis(make_client, make_settings, tmp_path):
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens on its port
    http = await make_client(make_settings(redis_url=server.url, rate_limit_requests_per_minute=2))
    _, token = await client_with_token(http)

    statuses = await _burst(http, 4, token)

    assert sorted(statuses) == [200, 200, 429, 429]
    assert not http.app[RATE_LIMITER].link.up
