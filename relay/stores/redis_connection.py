"""relay's Redis client, opened: which failures to reach Redis are settings to mend."""

from __future__ import annotations

import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import sockets
from relay.config import ConfigError


async def open_redis(url: str, timeout: float) -> redis.Redis:
    """A client for RELAY_REDIS_URL, refused (ConfigError) when the URL or the Redis
    behind it says a setting is wrong; a Redis out of reach still gives one."""
    try:
        client = redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            # Never resend a command: a check whose reply was lost may have run, and
            # would be charged twice (charges are numbered; checks are not).
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:  # redis-py's message names the schemes, not the URL
        raise ConfigError(f"RELAY_REDIS_URL: {exc}") from None
    try:
        await _check_handshake(client)
    except ConfigError:
        await client.aclose()
        raise
    return client


async def _check_handshake(client: redis.Redis) -> None:
    """Refuse (ConfigError) a Redis that answers but refuses relay's credentials or its
    database number: no restart mends that, and rate limits would silently fall back
    to each instance's own. A Redis out of reach is an outage: relay starts degraded
    (the rate limiter says so) and returns to Redis when it is back."""
    pool = client.connection_pool
    try:
        connection = await sockets.registered(pool.get_connection)  # AUTH (or HELLO), SELECT
    except redis_errors.AuthenticationError as exc:
        raise _refused_by_redis(client, "relay's credentials", exc) from None
    except redis_errors.ResponseError as exc:
        raise _refused_by_redis(client, "relay's connection", exc) from None  # SELECT
    except redis_errors.InvalidResponse:
        # Something answers there, but not in Redis's protocol: another service's port,
        # or a TLS Redis reached with redis://. No restart mends it either.
        raise ConfigError(
            f"RELAY_REDIS_URL: the server at {_redis_address(client)} does not speak"
            " Redis's protocol (a TLS Redis is reached with rediss://)"
        ) from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, RuntimeError):
        return
    await pool.release(connection)


def _refused_by_redis(client: redis.Redis, what: str, exc: BaseException) -> ConfigError:
    # The URL is never quoted: it may hold the password. Redis's words hold neither.
    return ConfigError(f"RELAY_REDIS_URL: Redis at {_redis_address(client)} refuses {what}: {exc}")


def _redis_address(client: redis.Redis) -> str:
    options = client.connection_pool.connection_kwargs
    return str(options.get("path") or f"{options.get('host')}:{options.get('port')}")
