"""A Redis that answers but refuses the limiter's writes is an outage, one that lasts.

Out of memory (maxmemory with noeviction) or a read-only replica: PING, TIME and
SCRIPT LOAD still work, but every charged request fails. relay must stay on its
in-process buckets until writes work again, say so once, and show it in /health.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as redis

from relay.appkeys import RATE_LIMITER
from relay.devservers import RedisServer
from relay.devservers.process import free_port
from relay.services.redis_link import RedisLink
from tests.api_calls import bearer, client_with_token
from tests.redis_calls import until

LINK_LOGGER = "relay.services.redis_link"

REFUSALS = {
    # name: (commands that make Redis refuse writes, commands that undo them)
    "out of memory": (
        [
            ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
            ("CONFIG", "SET", "maxmemory", "100kb"),
        ],
        [("CONFIG", "SET", "maxmemory", "0")],
    ),
    "read-only replica": (
        [("REPLICAOF", "127.0.0.1", "__free_port__")],
        [("REPLICAOF", "NO", "ONE")],
    ),
}


async def _run(connection: redis.Redis, commands: list[tuple[str, ...]]) -> None:
    for command in commands:
        args = [str(free_port()) if arg == "__free_port__" else arg for arg in command]
        await connection.execute_command(*args)


def _link_messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LINK_LOGGER]


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_a_redis_refusing_writes_keeps_relay_in_process_until_it_takes_them(
    make_client, make_settings, tmp_path, caplog, refusal
):
    caplog.set_level(logging.INFO)
    refuse, undo = REFUSALS[refusal]
    with RedisServer(tmp_path / "redis") as server:
        http = await make_client(
            make_settings(redis_url=server.url, redis_timeout=0.2, rate_limit_requests_per_minute=5)
        )
        _, token = await client_with_token(http)
        limiter = http.app[RATE_LIMITER]
        assert (await http.get("/v1/me", headers=bearer(token))).status == 200
        async with redis.from_url(server.url) as admin:
            await _run(admin, refuse)
            assert await admin.ping()  # it answers: only writes are refused

            statuses, up = [], []
            for _ in range(50):  # 2.5 s: the link's probe runs twice, at least
                statuses.append((await http.get("/v1/me", headers=bearer(token))).status)
                up.append(limiter.link.up)
                await asyncio.sleep(0.05)
            health = await http.get("/health")
            body = await health.json()

            # In-process, from the level Redis last reported (4 left), and never back.
            assert statuses == [200] * 4 + [429] * 46
            assert not any(up)
            assert _link_messages(caplog) == ["redis unavailable"]
            assert health.status == 200
            assert body["status"] == "degraded"
            assert body["checks"]["redis"]["status"] == "degraded"
            assert body["checks"]["redis"]["error"]

            await _run(admin, undo)
            await until(lambda: limiter.link.up)
            body = await (await http.get("/health")).json()
            assert body["checks"]["redis"]["status"] == "ok"
            await until(lambda: len(_link_messages(caplog)) == 2)
            assert _link_messages(caplog) == ["redis unavailable", "redis available again"]


async def test_a_link_that_keeps_failing_again_is_one_outage_in_the_log(caplog):
    caplog.set_level(logging.INFO)
    probed = asyncio.Event()

    async def probe() -> None:
        probed.set()

    link = RedisLink(probe, timeout=0.1, retry=0.01, settle=1.0)
    for _ in range(5):  # down, back for a moment, down again: a loop lagging, say
        link.lost(TimeoutError())
        await until(lambda: link.up)
        assert not link.error
    link.lost(TimeoutError())
    assert link.error == "TimeoutError"
    assert _link_messages(caplog) == ["redis unavailable"]

    await until(lambda: link.up)
    await until(lambda: len(_link_messages(caplog)) == 2)  # up for `settle`: over
    assert _link_messages(caplog) == ["redis unavailable", "redis available again"]
    await link.close()
