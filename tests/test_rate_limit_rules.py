"""The rules under the rate limiter: bucket arithmetic, addresses, header formats, settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as redis
import redis.exceptions as redis_errors

from relay.config import ConfigError, Settings, load_settings
from relay.devservers import RedisServer
from relay.durations import go_duration
from relay.services.client_ip import TrustedProxies
from relay.stores.buckets import Draw, Mode
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets


@pytest.mark.parametrize(
    "ms,text",
    [
        (0, "0s"),
        (12, "12ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (17_280, "17.28s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (61_250, "1m1.25s"),
        (3_600_000, "1h0m0s"),
        (3_723_000, "1h2m3s"),
        (411_480_000, "114h18m0s"),
    ],
)
def test_durations_read_as_openai_writes_them(ms, text):
    assert go_duration(ms) == text


PROXIES = TrustedProxies(["127.0.0.0/8", "10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        # An untrusted peer is the client, whatever it says.
        ("198.51.100.7", ["203.0.113.1"], "198.51.100.7"),
        # A trusted peer without the header: the proxy is all we know.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        # Right-most untrusted entry: anything left of it is the client's own claim.
        ("127.0.0.1", ["192.0.2.66, 203.0.113.1"], "203.0.113.1"),
        ("127.0.0.1", ["192.0.2.66, 203.0.113.1, 10.0.0.5"], "203.0.113.1"),
        # Several headers read as one list, in order.
        ("127.0.0.1", ["192.0.2.66", "203.0.113.1, 10.0.0.5"], "203.0.113.1"),
        # Garbage where a proxy would write an address: stop at the last trusted hop.
        ("127.0.0.1", ["203.0.113.1, not-an-ip, 10.0.0.5"], "10.0.0.5"),
        ("127.0.0.1", ["not-an-ip"], "127.0.0.1"),
        # Every hop trusted: the left-most is the best there is.
        ("127.0.0.1", ["10.0.0.9, 10.0.0.5"], "10.0.0.9"),
        ("::ffff:127.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        ("::1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_client_address(peer, forwarded, expected):
    assert PROXIES.client_address(peer, forwarded) == expected


def test_a_unix_socket_peer_is_trusted_only_when_listed():
    assert TrustedProxies([]).client_address(None, ["203.0.113.1"]) == "unix"
    assert TrustedProxies(["unix"]).client_address(None, ["203.0.113.1"]) == "203.0.113.1"
    assert TrustedProxies(["unix"]).client_address(None, []) == "unix"


def test_trusted_proxies_setting_is_checked():
    settings = Settings.from_env({"RELAY_TRUSTED_PROXIES": "10.0.0.1/8, ::1 unix"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1/128", "unix")
    with pytest.raises(ConfigError, match="RELAY_TRUSTED_PROXIES"):
        Settings.from_env({"RELAY_TRUSTED_PROXIES": "10.0.0.0/8 nginx"})


def test_rate_limits_can_be_switched_off():
    assert Settings.from_env({}).rate_limits is True
    assert Settings.from_env({"RELAY_RATE_LIMITS": "off"}).rate_limits is False
    with pytest.raises(ConfigError, match="RELAY_RATE_LIMITS"):
        Settings.from_env({"RELAY_RATE_LIMITS": "sometimes"})


def test_production_needs_an_identity_hash_key():
    env = {
        "RELAY_ENV": "production",
        "RELAY_JWT_SECRET": "j" * 40,
        "RELAY_ADMIN_TOKEN": "a" * 40,
        "RELAY_STATE_DIR": "/nonexistent/relay-state",
    }
    with pytest.raises(ConfigError, match="RELAY_IDENTITY_HASH_KEY is missing"):
        load_settings(env)
    with pytest.raises(ConfigError, match="RELAY_IDENTITY_HASH_KEY is shorter"):
        load_settings({**env, "RELAY_IDENTITY_HASH_KEY": "short"})


def test_development_keeps_one_identity_hash_key(tmp_path: Path):
    env = {"RELAY_STATE_DIR": str(tmp_path / "state")}
    first = load_settings(env).identity_hash_key
    assert len(first) >= 32
    assert load_settings(env).identity_hash_key == first
    assert (tmp_path / "state" / "identity_hash_key").stat().st_mode & 0o777 == 0o600


# One sequence of requests, run on both implementations: they must agree.
SCRIPT = [
    [Draw("a", 3)],
    [Draw("a", 3)],
    [Draw("a", 3), Draw("b", 1)],
    [Draw("a", 3), Draw("b", 1)],  # b is empty now: a must not be charged either
    [Draw("a", 3)],
    [Draw("a", 3)],
    [Draw("t", 100, 0, Mode.GATE)],
    [Draw("t", 100, 150, Mode.DEBIT)],
    [Draw("t", 100, 0, Mode.GATE)],
    [Draw("z", 0)],
    [Draw("z", 0, 5, Mode.DEBIT)],
]


async def test_local_buckets_follow_the_redis_script(redis_url):
    local = LocalBuckets()
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0)
        in_redis = [await shared.draw(draws) for draws in SCRIPT]
        await shared.close()
    in_process = [local.draw(draws) for draws in SCRIPT]

    for draws, one, other in zip(SCRIPT, in_redis, in_process, strict=True):
        assert one.allowed == other.allowed, draws
        for a, b in zip(one.levels, other.levels, strict=True):
            assert a.remaining == b.remaining, draws
            assert abs(a.reset_ms - b.reset_ms) < 1000, draws
            assert (a.wait_ms == 0) == (b.wait_ms == 0) and (a.wait_ms < 0) == (b.wait_ms < 0)
    assert [outcome.allowed for outcome in in_redis] == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        False,
        False,
        True,
    ]
    assert in_redis[3].levels[0].remaining == 0  # a: 3 - 3 taken, none by the refusal
    assert in_redis[8].levels[0].remaining == -50
    assert 29_000 < in_redis[8].levels[0].wait_ms <= 30_000  # 50 tokens at 100 a minute


def test_local_buckets_refill_with_time():
    now = [0.0]
    local = LocalBuckets(clock=lambda: now[0])
    for _ in range(2):
        assert local.draw([Draw("k", 2)]).allowed
    refused = local.draw([Draw("k", 2)])
    assert not refused.allowed and refused.levels[0].wait_ms == 30_000
    now[0] += 30_000
    assert local.draw([Draw("k", 2)]).allowed
    now[0] += 120_000
    assert local.draw([Draw("k", 2)]).levels[0].remaining == 1  # full again, capped at 2


async def test_concurrent_draws_share_script_runs_and_are_decided_one_after_another(redis_url):
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0)
        runs = []
        evalsha = connection.evalsha

        async def counted(*args):
            runs.append(args)
            return await evalsha(*args)

        connection.evalsha = counted
        outcomes = await asyncio.gather(
            *(shared.draw([Draw("burst", 5), Draw(f"own-{n}", 10)]) for n in range(12))
        )
        await shared.close()
    assert [outcome.allowed for outcome in outcomes] == [True] * 5 + [False] * 7
    assert [outcome.levels[0].remaining for outcome in outcomes[:5]] == [4, 3, 2, 1, 0]
    assert len(runs) < len(outcomes)


async def test_a_debit_nobody_waits_for_comes_before_the_checks_queued_after_it(redis_url):
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0)
        failures: list[BaseException] = []
        shared.charge([Draw("spent", 100, 150, Mode.DEBIT)], failures.append)
        gate = await shared.draw([Draw("spent", 100, 0, Mode.GATE)])
        await shared.close()
    assert not gate.allowed and gate.levels[0].remaining == -50
    assert failures == []


async def test_a_failed_batch_fails_every_call_in_it(tmp_path):
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens
    async with redis.from_url(server.url, socket_connect_timeout=0.5) as connection:
        shared = RedisBuckets(connection, timeout=1.0)
        failures: list[BaseException] = []
        shared.charge([Draw("x", 1, 1, Mode.DEBIT)], failures.append)
        with pytest.raises(redis_errors.ConnectionError):
            await shared.draw([Draw("x", 1)])
        await shared.close()
    assert len(failures) == 1


async def test_a_debit_alone_reaches_redis_shortly_and_at_close(redis_url):
    async with redis.from_url(redis_url) as connection:
        shared = RedisBuckets(connection, timeout=5.0)
        shared.charge([Draw("soon", 100, 30, Mode.DEBIT)], pytest.fail)
        assert await connection.exists("soon") == 0  # not a round trip of its own at once
        await asyncio.sleep(shared.CHARGE_DELAY * 4)
        assert float(await connection.hget("soon", "l")) == 70
        shared.charge([Draw("late", 100, 30, Mode.DEBIT)], pytest.fail)
        await shared.close()  # relay stopping: what is queued still goes
        assert float(await connection.hget("late", "l")) == 70
