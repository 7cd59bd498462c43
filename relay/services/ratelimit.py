"""Rate limits: which buckets a request draws on, in Redis or, while Redis is away, in-process.

A client has three buckets: every /v1 request draws on `requests`, chat
requests also on `chat`, and on `tokens`: a chat is refused while that one is
below zero, and otherwise reserves there the tokens its body is estimated at
(at most the bucket's capacity), in the same decision, so requests sent
together see each other's share (as OpenAI's own token limits do). Its answer's
real usage settles the reservation in one charge as it ends; a request that ends
without an answer gives it back (other calls spend no tokens, so a client in debt
may still read and erase): both in token_charges.py.
Token exchanges and attestation reports (unauthenticated) draw on a bucket of
the caller's address each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis

from relay.config import ConfigError, Settings, with_development_secrets
from relay.lru import LruCache
from relay.metrics import RATE_LIMIT_LOOP_LAG
from relay.services.client_ip import TrustedProxies, limited_address
from relay.services.identity import IdentityHasher
from relay.services.rate_verdicts import (
    ATTESTATION_REPORTS,
    CHAT,
    REQUESTS,
    TOKEN_EXCHANGES,
    TOKENS,
    Bucket,
    Reservation,
    Verdict,
    verdict,
)
from relay.services.redis_link import RedisLink
from relay.services.token_charges import TokenCharges
from relay.stores.buckets import Draw, Mode, Outcome
from relay.stores.clients import Client
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import LoopLagError, RedisBuckets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Per-minute defaults; a client's `limits` override the first three."""

    requests_per_minute: int
    chat_requests_per_minute: int
    tokens_per_minute: int
    token_exchanges_per_minute: int
    attestation_reports_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            requests_per_minute=settings.rate_limit_requests_per_minute,
            chat_requests_per_minute=settings.rate_limit_chat_per_minute,
            tokens_per_minute=settings.rate_limit_tokens_per_minute,
            token_exchanges_per_minute=settings.rate_limit_token_exchanges_per_minute,
            attestation_reports_per_minute=settings.rate_limit_attestation_reports_per_minute,
        )

    def of(self, client: Client, name: str) -> int:
        override = client.limits.get(name)
        return override if isinstance(override, int) else int(getattr(self, name))


class _Plan(NamedTuple):
    """A client's buckets for one kind of request, worked out once per client row."""

    client: Client  # the row it was made from: a changed client gets a new plan
    buckets: tuple[Bucket, ...]  # every bucket drawn on, `tokens` last
    draws: tuple[Draw, ...]  # the same request after request (all but `tokens`)
    tokens: Draw | None  # a chat's: its cost, the reservation, differs every time


# Some 1.2 KB each, and the client row it was made from (0.65 KB) when no longer
# cached: 18 MiB at most.
MAX_PLANS = 10_000


class RateLimiter:
    """Decides whether a request may pass; its `charges` take an admitted chat's tokens after."""

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
        # The in-process buckets follow every level Redis reports, so when Redis
        # goes away each client carries on from what it used there.
        self.local = LocalBuckets()
        self._redis = RedisBuckets(redis, timeout=timeout, on_levels=self.local.remember)
        self.link = RedisLink(self._redis.probe, timeout=timeout)
        self._plans: LruCache[tuple[str, bool], _Plan] = LruCache(MAX_PLANS)
        # An admitted chat's tokens, charged after the fact to the buckets decided by here.
        self.charges = TokenCharges(
            self._tokens_of, self.local, self._redis, self.link, enabled=enabled
        )
        self.link.on_up = self._pay_owed

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
        # The link first: Redis back meanwhile starts no payment of what it is owed
        # (a read of a client's row, maybe) after the charges have ended.
        await self.link.close()
        await self.charges.close()
        await self._redis.close()

    def _pay_owed(self) -> None:
        """Redis is back: charge it, with the next batch, what this process took while it
        was away, net of the refill, so that neither an outage nor its end hands a
        client a fresh allowance. A client's tokens are charged by its limits in force
        now (TokenCharges); its requests, and the tokens of a client no longer planned
        here, by the limit they were last drawn by."""
        owed = self.local.take_owed()
        if not owed:
            return
        clients = {plan.tokens.key: plan.client for plan in self._plans.values() if plan.tokens}
        for draw in owed:
            if (client := clients.get(draw.key)) is not None:
                self.charges.pay_owed(client, draw.cost)
            else:  # this process took it already
                self._redis.charge((draw,), self.link.lost)

    async def check_client(self, client: Client, *, chat: bool, reserve: int = 0) -> Verdict:
        """Take one request from the client's buckets; a chat also takes one from its chat
        bucket, is refused while its tokens are in debt and otherwise reserves `reserve`
        tokens (they may take the bucket into debt), all in one decision."""
        plan = self._plan_of(client, chat)
        if plan.tokens is None:
            return verdict(plan.buckets, await self._draw(plan.draws))
        tokens = plan.tokens
        # At most a minute's worth: the usage beyond it is charged as the answer ends.
        reserve = max(0, min(reserve, tokens.capacity))
        taking = (Draw(tokens.key, tokens.capacity, reserve, Mode.GATE),)

        def give_back(outcome: Outcome) -> None:  # its client left while Redis decided
            if reserve and outcome.allowed:
                self.charges.settle(client, 0, Reservation(reserve, in_redis=True))

        outcome, in_redis = await self._decide(plan.draws, taking, give_back)
        # Every chat admitted holds one, even of nothing: a chunked body reserves once read.
        reservation = Reservation(reserve, in_redis) if outcome.allowed else None
        return verdict(plan.buckets, outcome, reservation)

    async def check_address(self, address: str, name: str) -> Verdict:
        """Take one from the caller's address's bucket `name`: TOKEN_EXCHANGES or
        ATTESTATION_REPORTS."""
        limit = {
            TOKEN_EXCHANGES: self.limits.token_exchanges_per_minute,
            ATTESTATION_REPORTS: self.limits.attestation_reports_per_minute,
        }[name]
        key = self._key("address", limited_address(address), name)
        bucket = Bucket(name, Draw(key, limit))
        return verdict((bucket,), await self._draw((bucket.draw,)))

    def _plan_of(self, client: Client, chat: bool) -> _Plan:
        plan = self._plans.get((client.id, chat))
        if plan is None or plan.client is not client:
            plan = self._plan(client, chat)
        return plan

    def _tokens_of(self, client: Client) -> Draw:
        tokens = self._plan_of(client, True).tokens
        assert tokens is not None, "a chat's plan draws on its tokens"
        return tokens

    def _plan(self, client: Client, chat: bool) -> _Plan:
        buckets = [self._bucket(client, REQUESTS, "requests_per_minute")]
        if chat:
            buckets.append(self._bucket(client, CHAT, "chat_requests_per_minute"))
        draws = tuple(bucket.draw for bucket in buckets)
        tokens = None
        if chat:
            buckets.append(
                self._bucket(client, TOKENS, "tokens_per_minute", mode=Mode.GATE, cost=0)
            )
            tokens = buckets[-1].draw
        plan = _Plan(client, tuple(buckets), draws, tokens)
        self._plans.put((client.id, chat), plan)
        return plan

    def _bucket(
        self, client: Client, name: str, limit: str, *, mode: Mode = Mode.TAKE, cost: int = 1
    ) -> Bucket:
        key = self._key("client", client.id, name)
        return Bucket(name, Draw(key, self.limits.of(client, limit), cost, mode))

    def _key(self, kind: str, identity: str, bucket: str) -> str:
        # The braces group one identity's buckets. relay talks to one Redis, not a
        # Cluster: a script run decides the buckets of many identities at once.
        return f"relay:rl:{{{self._hasher.pseudonym(kind, identity)}}}:{bucket}"

    async def _draw(self, draws: tuple[Draw, ...]) -> Outcome:
        outcome, _ = await self._decide(draws)
        return outcome

    async def _decide(
        self,
        draws: tuple[Draw, ...],
        extra: tuple[Draw, ...] = (),
        on_abandoned: Callable[[Outcome], object] | None = None,
    ) -> tuple[Outcome, bool]:
        """The outcome of `draws` (and `extra`, encoded afresh), and whether it counts in
        Redis: decided there, or here and owed to it (`on_abandoned`: see
        RedisBuckets.draw)."""
        if self.link.up:
            try:
                return await self._redis.draw(draws, extra, on_abandoned), True
            except LoopLagError:  # relay was late, not Redis: this batch alone goes without it
                RATE_LIMIT_LOOP_LAG.inc()
            except Exception as exc:  # any Redis trouble (a late batch too): limit in-process
                self.link.lost(exc)
        # What Redis is away for is owed to it, a chat's reservation too, which is then
        # settled as one Redis took; relay's own lateness leaves Redis out of it.
        owed = 0 if self.link.up else len(draws) + len(extra)
        return self.local.draw(draws + extra if extra else draws, owed=owed), bool(owed)
