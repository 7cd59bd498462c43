"""Key checks wait in a bounded line: a crowd of guesses cannot hold up a good exchange."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import aiohttp

from relay.appkeys import CLIENTS
from tests.api_calls import ADMIN, assert_error, create_client, exchange


def _random_key() -> str:
    return f"rk_{secrets.token_hex(8)}_{secrets.token_hex(24)}"


async def _line_full(pool, gate: threading.Event) -> list[asyncio.Task]:
    """Every place in the app's bcrypt line taken by work that waits for `gate`."""
    holders = [asyncio.create_task(pool.run(gate.wait)) for _ in range(pool.capacity)]
    await asyncio.sleep(0)  # each task takes its place before its first await
    assert pool.taken == pool.capacity
    return holders


async def _busy(response) -> bytes:
    error = await assert_error(response, 503, "key_checks_busy")
    assert error["type"] == "service_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert "WWW-Authenticate" not in response.headers  # nothing was said about the key
    return await response.read()


async def test_a_full_line_refuses_at_once_whatever_the_key(http):
    client = await create_client(http)
    pool = http.app[CLIENTS].hasher.pool
    gate = threading.Event()
    holders = await _line_full(pool, gate)
    try:
        good, unknown, malformed = [
            await asyncio.wait_for(http.post("/auth/token", json={"api_key": key}), 10)
            for key in (client["api_key"], _random_key(), "not-a-key")
        ]
        # An operator making a key is not refused: the hash waits its turn.
        created = asyncio.create_task(
            http.post("/admin/clients", json={"name": "made while busy"}, headers=ADMIN)
        )
        await asyncio.wait({created}, timeout=0.5)  # time to join the line
    finally:
        gate.set()
    # The right key and a guess get the same refusal: no oracle in it.
    assert await _busy(good) == await _busy(unknown)
    # Text that cannot be a key needs no bcrypt thread to be refused.
    await assert_error(malformed, 401, "invalid_api_key")
    await asyncio.gather(*holders)
    assert (await created).status == 201

    await exchange(http, client["api_key"])
    assert pool.taken == 0  # every place given back


async def test_up_to_the_lines_capacity_nobody_is_refused(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_token_exchanges_per_minute=10_000))
    client = await create_client(http)
    pool = http.app[CLIENTS].hasher.pool

    responses = await asyncio.gather(
        *(
            http.post("/auth/token", json={"api_key": client["api_key"]})
            for _ in range(pool.capacity)
        )
    )

    assert [response.status for response in responses] == [200] * pool.capacity
    assert pool.taken == 0


async def test_a_flood_of_guesses_cannot_hold_up_a_good_exchange(make_client, make_settings):
    """The reviewer's attack: random keys from many /64s through a trusted proxy, at
    production cost. Before the line was bounded a good exchange waited behind every
    guess (about 100 x 0.3 s over 2 cores); now it is answered within a few checks'
    time or refused at once."""
    http = await make_client(make_settings(bcrypt_rounds=12, trusted_proxies=("127.0.0.0/8",)))
    client = await create_client(http)
    url = http.make_url("/auth/token")

    async def guess(session: aiohttp.ClientSession, n: int) -> int:
        headers = {"X-Forwarded-For": f"2001:db8:{n // 65536:x}:{n % 65536:x}::1"}
        async with session.post(url, json={"api_key": _random_key()}, headers=headers) as answer:
            return answer.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        flood = asyncio.gather(*(guess(session, n) for n in range(240)))
        await asyncio.sleep(0.5)  # let the flood in first; what is asserted does not need it
        started = time.monotonic()
        response = await http.post("/auth/token", json={"api_key": client["api_key"]})
        waited = time.monotonic() - started
        statuses = await flood

    assert response.status in (200, 503), await response.text()
    # At most a line's worth of checks (2-core machine: 10 checks, 5 rounds of ~0.3 s)
    # stands before it; generous for a loaded machine, far below the unbounded wait.
    assert waited < 8, waited
    assert set(statuses) <= {401, 503}
    assert 503 in statuses  # the line filled and turned guesses away
    await exchange(http, client["api_key"])
