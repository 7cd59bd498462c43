"""Rate limits: which buckets a request draws on, in Redis or, while Redis is away, in-process.

A client has three buckets: every /v1 request draws on `requests`, chat
requests also on `chat`, and answers debit their real token usage from
`tokens` afterwards (a request is refused while that one is below zero).
Token exchanges draw on one bucket per client address.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.config import ConfigError, Settings, with_development_secrets
from relay.services.client_ip import TrustedProxies
from relay.services.identity import IdentityHasher
from relay.services.redis_link import RedisLink
from relay.stores.buckets import REFILL_MS, Draw, Level, Mode, Outcome
from relay.stores.clients import Client
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets

log = logging.getLogger(__name__)

# Bucket names; each is also its key suffix and its metrics label.
REQUESTS = "requests"
CHAT = "chat_requests"
TOKENS = "tokens"
TOKEN_EXCHANGES = "token_exchanges"


@dataclass(frozen=True)
class Limits:
    """Per-minute defaults; a client's `limits` override the first three."""

    requests_per_minute: int
    chat_requests_per_minute: int
    tokens_per_minute: int
    token_exchanges_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            requests_per_minute=settings.rate_limit_requests_per_minute,
            chat_requests_per_minute=settings.rate_limit_chat_per_minute,
            tokens_per_minute=settings.rate_limit_tokens_per_minute,
            token_exchanges_per_minute=settings.rate_limit_token_exchanges_per_minute,
        )

    def of(self, client: Client, name: str) -> int:
        override = client.limits.get(name)
        return override if isinstance(override, int) else int(getattr(self, name))


@dataclass(frozen=True)
class Quota:
    """One bucket as a client sees it in the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True)
class Verdict:
    requests: Quota
    tokens: Quota | None
    refused: str | None = None  # the bucket that refused, when one did
    retry_after_ms: int = 0

    @property
    def allowed(self) -> bool:
        return self.refused is None

    @property
    def refused_type(self) -> str:
        """OpenAI's error type for the refusal: "tokens" or "requests"."""
        return TOKENS if self.refused == TOKENS else "requests"


@dataclass(frozen=True)
class _Bucket:
    name: str
    draw: Draw


class RateLimiter:
    """Decides whether a request may pass; the one thing the API and the chat relay call."""

    def __init__(
        self,
        redis: Redis,
        hasher: IdentityHasher,
        limits: Limits,
        *,
        timeout: float,
        enabled: bool = True,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self.limits = limits
        self.enabled = enabled
        self.trusted_proxies = trusted_proxies or TrustedProxies(())
        self.timeout = timeout
        self._hasher = hasher
        self._redis = RedisBuckets(redis, timeout=timeout)
        self.local = LocalBuckets()
        self.link = RedisLink(self._redis.load, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis) -> RateLimiter:
        # In development a missing key is generated once and kept in the state dir.
        key = with_development_secrets(settings).identity_hash_key
        if not key:
            raise ConfigError("RELAY_IDENTITY_HASH_KEY is missing")
        return cls(
            redis,
            IdentityHasher(key),
            Limits.from_settings(settings),
            timeout=settings.redis_timeout,
            enabled=settings.rate_limits,
            trusted_proxies=TrustedProxies(settings.trusted_proxies),
        )

    async def start(self) -> None:
        if self.enabled:
            await self.link.start()

    async def close(self) -> None:
        await self.link.close()
        await self._redis.close()

    async def check_client(self, client: Client, *, chat: bool) -> Verdict:
        """Take one request from the client's buckets (and its chat bucket for chat)."""
        buckets = [self._bucket(client, REQUESTS, "requests_per_minute")]
        if chat:
            buckets.append(self._bucket(client, CHAT, "chat_requests_per_minute"))
        buckets.append(self._bucket(client, TOKENS, "tokens_per_minute", mode=Mode.GATE, cost=0))
        return _verdict(buckets, await self._draw([bucket.draw for bucket in buckets]))

    async def check_address(self, address: str) -> Verdict:
        """Take one token exchange from the bucket of the caller's address."""
        key = self._key("address", address, TOKEN_EXCHANGES)
        buckets = [_Bucket(TOKEN_EXCHANGES, Draw(key, self.limits.token_exchanges_per_minute))]
        return _verdict(buckets, await self._draw([bucket.draw for bucket in buckets]))

    async def debit_tokens(self, client: Client, tokens: int) -> None:
        """Charge an answer's real token usage; never raises (falls back, or logs)."""
        if not self.enabled or tokens <= 0:
            return
        try:
            bucket = self._bucket(client, TOKENS, "tokens_per_minute", mode=Mode.DEBIT, cost=tokens)
            await self._draw([bucket.draw])
        except Exception:  # the answer is already out; losing one debit beats failing it
            log.exception("token debit failed", extra={"client_id": client.id})

    def _bucket(
        self, client: Client, name: str, limit: str, *, mode: Mode = Mode.TAKE, cost: int = 1
    ) -> _Bucket:
        key = self._key("client", client.id, name)
        return _Bucket(name, Draw(key, self.limits.of(client, limit), cost, mode))

    def _key(self, kind: str, identity: str, bucket: str) -> str:
        # The braces are a Redis Cluster hash tag: one identity's buckets share a slot.
        return f"relay:rl:{{{self._hasher.pseudonym(kind, identity)}}}:{bucket}"

    async def _draw(self, draws: list[Draw]) -> Outcome:
        if self.link.up:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._redis.draw(draws)
            except Exception as exc:  # any Redis trouble: limit in-process instead
                self.link.lost(exc)
        return self.local.draw(draws)


def _verdict(buckets: list[_Bucket], outcome: Outcome) -> Verdict:
    pairs = list(zip(buckets, outcome.levels, strict=True))
    requests = [(bucket, level) for bucket, level in pairs if bucket.name != TOKENS]
    tokens = [(bucket, level) for bucket, level in pairs if bucket.name == TOKENS]
    refused = [(bucket, level) for bucket, level in pairs if level.wait_ms != 0]
    if refused:
        # Every bucket must pass, so the client waits for the slowest one.
        bucket, level = max(refused, key=lambda pair: _wait(pair[1]))
        shown = [(bucket, level)] if bucket.name != TOKENS else requests
        return Verdict(
            requests=_quota(*min(shown, key=_tightness)),
            tokens=_quota(*tokens[0]) if tokens else None,
            refused=bucket.name,
            retry_after_ms=_wait(level),
        )
    return Verdict(
        requests=_quota(*min(requests, key=_tightness)),
        tokens=_quota(*tokens[0]) if tokens else None,
    )


def _wait(level: Level) -> int:
    # A capacity of zero never refills: tell the client to come back in a period.
    return REFILL_MS if level.wait_ms < 0 else level.wait_ms


def _tightness(pair: tuple[_Bucket, Level]) -> tuple[int, int]:
    bucket, level = pair
    return level.remaining, bucket.draw.capacity


def _quota(bucket: _Bucket, level: Level) -> Quota:
    return Quota(bucket.draw.capacity, max(0, level.remaining), level.reset_ms)
