"""Token charges: an admitted chat's usage charged to its client's tokens bucket after the fact.

A chat reserves its estimate as it is admitted (RateLimiter.check_client); here
a chunked body's estimate is added once read, and the answer's real usage settles
the reservation as it ends, in the buckets in use then, by the client's limits in
force then. While Redis is away this process's bucket takes it for Redis, which is
owed the bucket's drop once it is back (LocalBuckets.take_owed), so an outage
forgives no usage, nor charges what Redis would have refilled meanwhile.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from relay.errors import RelayError
from relay.services.client_cache import ClientCache
from relay.services.rate_verdicts import Reservation
from relay.services.redis_link import RedisLink
from relay.stores.buckets import Draw, Mode
from relay.stores.clients import Client
from relay.stores.local_buckets import LocalBuckets
from relay.stores.redis_buckets import RedisBuckets


class _To(enum.Enum):
    """Where a token charge goes."""

    HERE = 0  # this process's buckets only
    REDIS = 1  # Redis, or while it is away this process's buckets, for Redis: owed it
    OWED = 2  # Redis only (this process's buckets took it already), held until it takes it


class TokenCharges:
    """Charges admitted chats' tokens, without waiting, to the buckets RateLimiter decides by."""

    def __init__(
        self,
        tokens_of: Callable[[Client], Draw],
        local: LocalBuckets,
        redis: RedisBuckets,
        link: RedisLink,
        *,
        enabled: bool = True,
    ) -> None:
        self._tokens_of = tokens_of  # a client's tokens bucket, by its row's limits
        self._local = local
        self._redis = redis
        self._link = link
        self._enabled = enabled
        # Client rows as they are now, once relay caches them: a settlement is charged
        # by the limits in force as it is made, not those its chat was admitted by.
        self.clients: ClientCache | None = None
        self._settling: set[asyncio.Future[None]] = set()

    async def close(self) -> None:
        if self._settling:  # settlements waiting for their client's row
            await asyncio.gather(*self._settling, return_exceptions=True)

    def reserve_more(self, client: Client, reservation: Reservation, tokens: int) -> int:
        """Add `tokens` to an admitted chat's reservation (the estimate of a chunked body,
        known once read), keeping it within a minute's budget, where it was taken:
        charged without waiting, as a settlement is. Returns the tokens added."""
        if not self._enabled:
            return 0
        bucket = self._tokens_of(client)
        tokens = max(0, min(tokens, bucket.capacity - reservation.tokens))
        if tokens:
            reservation.tokens += tokens
            self._charge(client, tokens, _To.REDIS if reservation.in_redis else _To.HERE)
        return tokens

    def settle(self, client: Client, used: int, reservation: Reservation | None) -> None:
        """Charge `used` tokens (an answer's usage; 0 for a request that ended without
        one) against what its chat reserved, in one charge: the difference, a debit or
        a credit (which never lifts the bucket past its limit), as if `used` had been
        taken when the chat was admitted, by the client's limits in force now (its row
        as cached, or read). A reservation is settled once, in the buckets
        in use now, for Redis (one taken here while Redis was away is owed to it as
        one Redis took); one only this process took (relay's loop too late for Redis) is
        given back here and `used` charged for Redis. Without waiting: the charge rides
        with the next batch of checks, which it precedes. Never raises."""
        reserved = reservation.take() if reservation is not None else 0
        charges: list[tuple[int, _To]] = []
        if reservation is not None and not reservation.in_redis:
            charges += [(-reserved, _To.HERE), (used, _To.REDIS)]
        elif used != reserved:
            charges.append((used - reserved, _To.REDIS))
        # (The final settlement of an answer already settled, say, charges nothing: no
        # row is looked up for it.)
        charges = [(cost, to) for cost, to in charges if cost]
        if charges and self._enabled:
            self._charge_by_current(client, charges)

    def _charge_by_current(self, client: Client, charges: list[tuple[int, _To]]) -> None:
        """Charge by the client's limits in force now: its row as cached, or read."""
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
            self._charge(client, cost, to)

    def pay_owed(self, client: Client, cost: int) -> None:
        """Redis is back: charge it the tokens this process took for it while it was away
        (net of the refill), by the limits in force now (`client` may be a row older than
        a limit changed since)."""
        self._charge_by_current(client, [(cost, _To.OWED)])

    def _charge(self, client: Client, cost: int, to: _To) -> None:
        if not self._enabled:
            return
        tokens = self._tokens_of(client)
        draws = (Draw(tokens.key, tokens.capacity, cost, Mode.DEBIT),)
        if to is _To.HERE:
            self._local.draw(draws)
            return
        if to is _To.REDIS and not self._link.up:
            self._local.draw(draws, owed=1)
            return

        # Its batch failed: RedisBuckets keeps the charge and sends it again with the
        # next batch, and Redis takes it once (whether it ran the failed batch or not),
        # so it is not owed; this process's buckets take it now, deciding meanwhile.
        def in_process(exc: BaseException) -> None:
            self._link.lost(exc)
            if to is _To.REDIS:
                self._local.draw(draws)

        self._redis.charge(draws, in_process)
