"""Rate limits: which buckets a request draws on, in Redis or, while Redis is away, in-process.

A client has three buckets: every /v1 request draws on `requests`, chat
requests also on `chat`, and on `tokens`: a chat is refused while that one is
below zero, and otherwise reserves there the tokens its body is estimated at
(at most the bucket's capacity), in the same decision, so requests sent
together see each other's share (as OpenAI's own token limits do). Its answer's
real usage settles the reservation in one charge as it ends; a request that
ends without an answer gives it back (other calls spend no tokens, so a client
in debt may still read and erase).
Token exchanges and attestation reports (unauthenticated) draw on a bucket of
the caller's address each.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis

from relay.config import ConfigError, Settings, with_development_secrets
from relay.errors import RelayError
from relay.metrics import RATE_LIMIT_LOOP_LAG
from relay.services.client_cache import ClientCache
from relay.services.client_ip import TrustedProxies, limited_address
from relay.services.identity import IdentityHasher
from relay.services.owed_tokens import OwedTokens
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


_MAX_PLANS = 100_000


class _To(enum.Enum):
    """Where a token charge goes."""

    HERE = 0  # this process's buckets only
    REDIS = 1  # Redis, or while it is away this process's buckets, and Redis owed it
    OWED = 2  # Redis only (this process's buckets took it already): owed while it is away


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
        # The in-process buckets follow every level Redis reports, so when Redis
        # goes away each client carries on from what it used there.
        self.local = LocalBuckets()
        self._redis = RedisBuckets(redis, timeout=timeout, on_levels=self.local.remember)
        self.link = RedisLink(self._redis.probe, timeout=timeout)
        self.owed = OwedTokens()
        self.link.on_up = self._pay_owed
        self._plans: dict[tuple[str, bool], _Plan] = {}
        # Client rows as they are now, once relay caches them: a settlement is charged
        # by the limits in force as it is made, not those its chat was admitted by.
        self.clients: ClientCache | None = None
        self._settling: set[asyncio.Future[None]] = set()

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
        if self._settling:  # settlements waiting for their client's row
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.link.close()
        await self._redis.close()

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
                self.settle_tokens(client, 0, Reservation(reserve, in_redis=True))

        outcome, in_redis = await self._decide(plan.draws, taking, give_back)
        # Every chat admitted holds one, even of nothing: a chunked body reserves once read.
        reservation = Reservation(reserve, in_redis) if outcome.allowed else None
        return verdict(plan.buckets, outcome, reservation)

    def reserve_more(self, client: Client, reservation: Reservation, tokens: int) -> int:
        """Add `tokens` to an admitted chat's reservation (the estimate of a chunked body,
        known once read), keeping it within a minute's budget, where it was taken:
        charged without waiting, as a settlement is. Returns the tokens added."""
        if not self.enabled:
            return 0
        bucket = self._plan_of(client, True).tokens
        assert bucket is not None, "a chat's plan draws on its tokens"
        tokens = max(0, min(tokens, bucket.capacity - reservation.tokens))
        if tokens:
            reservation.tokens += tokens
            self._charge_tokens(client, tokens, _To.REDIS if reservation.in_redis else _To.HERE)
        return tokens

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

    def settle_tokens(self, client: Client, used: int, reservation: Reservation | None) -> None:
        """Charge `used` tokens (an answer's usage; 0 for a request that ended without
        one) against what its chat reserved, in one charge: the difference, a debit or
        a credit (which never lifts the bucket past its limit), as if `used` had been
        taken when the chat was admitted, by the client's limits in force now (its row
        as cached, or read). A reservation is settled once, in the buckets
        in use now (one Redis took, settled while Redis is away, stays in Redis until it
        refills, a minute at most); one only this process took, settled while Redis is in
        use, is given back here and `used` charged in Redis. Without waiting: the charge
        rides with the next batch of checks, which it precedes. Never raises."""
        reserved = reservation.take() if reservation is not None else 0
        charges: list[tuple[int, _To]] = []
        if reservation is not None and not reservation.in_redis:
            # Taken in this process only (Redis away, or relay's loop late): given back
            # here, and Redis charged all the usage (owed it while away).
            if self.link.up:
                charges += [(-reserved, _To.HERE), (used, _To.REDIS)]
            else:
                charges += [(used - reserved, _To.HERE), (used, _To.OWED)]
        elif used != reserved:
            # One charge: while Redis is away, this process's buckets started from the
            # levels Redis last reported, its reservations included (and Redis is owed it).
            charges.append((used - reserved, _To.REDIS))
        # (The final settlement of an answer already settled, say, charges nothing: no
        # row is looked up for it.)
        charges = [(cost, to) for cost, to in charges if cost]
        if not charges or not self.enabled:
            return
        current = self.clients.cached(client.id) if self.clients is not None else client
        if current is not None:
            self._charge_all(current, charges)
            return
        # Changed since it was cached (or relay is not listening): read as it is now.
        settling = asyncio.ensure_future(self._read_and_charge(client, charges))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def _read_and_charge(self, client: Client, charges: list[tuple[int, _To]]) -> None:
        assert self.clients is not None
        try:
            current = await self.clients.get(client.id)
        except RelayError:  # the database is away: the row its chat was admitted by
            current = None
        self._charge_all(current or client, charges)  # a deleted client: as admitted

    def _charge_all(self, client: Client, charges: list[tuple[int, _To]]) -> None:
        for cost, to in charges:
            self._charge_tokens(client, cost, to)

    def _pay_owed(self) -> None:
        """Redis is back: charge it what was settled while it was away."""
        for client, cost in self.owed.take():
            self._charge_tokens(client, cost, _To.OWED)

    def _charge_tokens(self, client: Client, cost: int, to: _To) -> None:
        if not self.enabled:
            return
        tokens = self._plan_of(client, True).tokens
        assert tokens is not None, "a chat's plan draws on its tokens"
        draws = (Draw(tokens.key, tokens.capacity, cost, Mode.DEBIT),)
        if to is _To.HERE:
            self.local.draw(draws)
            return
        if not self.link.up:
            if to is _To.REDIS:
                self.local.draw(draws)
            self.owed.add(client, cost)
            return

        # A batch that failed charged nothing in Redis, however late it runs there
        # (RedisBuckets' deadlines): charging it here, and owing it to Redis, charges it
        # once in each. (A charge is never failed for relay's own lateness: RedisBuckets
        # sends it again.)
        def in_process(exc: BaseException) -> None:
            self.link.lost(exc)
            if to is _To.REDIS:
                self.local.draw(draws)
            self.owed.add(client, cost)

        self._redis.charge(draws, in_process)

    def _plan_of(self, client: Client, chat: bool) -> _Plan:
        plan = self._plans.get((client.id, chat))
        if plan is None or plan.client is not client:
            plan = self._plan(client, chat)
        return plan

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
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[(client.id, chat)] = plan
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
        """The outcome of `draws` (and `extra`, encoded afresh), and whether Redis decided
        it (`on_abandoned`: see RedisBuckets.draw)."""
        if self.link.up:
            try:
                return await self._redis.draw(draws, extra, on_abandoned), True
            except LoopLagError:  # relay was late, not Redis: this batch alone goes without it
                RATE_LIMIT_LOOP_LAG.inc()
            except Exception as exc:  # any Redis trouble (a late batch too): limit in-process
                self.link.lost(exc)
        return self.local.draw(draws + extra if extra else draws), False
