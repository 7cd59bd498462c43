"""Token buckets in Redis: one Lua script run decides every request that queued meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from relay.lru import LruCache
from relay.stores import bucket_script
from relay.stores.buckets import Draw, Mode, Outcome
from relay.stores.redis_clock import RedisClock

# Some 460 bytes each: 4.5 MiB at most.
MAX_ENCODED = 10_000


# The link's probe: a real script run that writes, so a Redis that answers but
# refuses writes (out of memory, a read-only replica, a failed save) fails it as
# it fails requests. Its bucket refills within a millisecond and expires in a second.
_PROBE = (Draw("relay:rl:{probe}:link", 1_000_000, 1, Mode.DEBIT),)


class _Call(NamedTuple):
    draws: tuple[Draw, ...]
    future: asyncio.Future[Outcome] | None  # None: nobody waits (a debit)
    on_error: Callable[[BaseException], object] | None
    at: float  # when it was queued (loop time): its caller waits `timeout` from then at most
    extra: tuple[Draw, ...] = ()  # drawn after `draws`, encoded afresh every time
    # Told the outcome Redis decided for a caller that stopped waiting after it was sent.
    on_abandoned: Callable[[Outcome], object] | None = None
    charge: int = 0  # a charge's number (from 1): Redis takes it once (bucket_script)

    @property
    def all_draws(self) -> tuple[Draw, ...]:
        return self.draws + self.extra if self.extra else self.draws


class LateBatchError(Exception):
    """Redis ran a batch after its deadline, charging nothing: decide it without Redis."""


class LoopLagError(Exception):
    """relay's own loop was busy until past a batch's deadline before the batch could be
    sent (a large answer encoded, say): not sent, so decided without Redis, which is not
    to blame and stays in use."""


class RedisBuckets:
    """Buckets shared by every relay instance on this Redis.

    Calls that arrive while a batch is out go together as the next batch: one
    EVALSHA, one round trip, however many requests arrived at once. A batch
    gives up `timeout` after the first of its callers arrived, so no caller
    waits longer than that, the batch before its own included; when a batch
    fails, the calls that queued behind it fail with it at once, rather than
    try the same Redis again. Charges nobody waits for (token debits) do not
    start a batch of their own: they go with the next request's, or after
    `CHARGE_DELAY`, so a request never queues behind the debit of the one
    before it. `on_levels` hears every call Redis decided, with its levels.
    A charge is taken in Redis once: one whose batch failed, even after Redis
    ran it (its reply lost), is kept and goes again with the next batch, and
    Redis, which marks the charges it took, skips it if it took it already.

    A batch relay gave up on is decided in-process; Redis may still run it
    once it is free (it was sent). So each batch carries a deadline on Redis's
    clock that certainly falls before relay gives up (see RedisClock), and the
    script charges nothing past it. The last REPLY_SHARE of the timeout, after
    the deadline, is for the reply to come back and be read (a loop stalled
    for longer right across the give-up, or a connection cut as Redis replies,
    can still lose a charged reply: its checks, decided in-process, are then
    charged in Redis twice, by that run and as owed once the link is back; its
    charges still once).
    """

    CHARGE_DELAY = 0.05
    REPLY_SHARE = 0.2
    MIN_REPLY_TIME = 0.002  # the loop's timers may fire up to a millisecond early

    def __init__(
        self,
        redis: Redis,
        *,
        timeout: float,
        clock: RedisClock | None = None,
        on_levels: Callable[[tuple[Draw, ...], Outcome], object] | None = None,
    ) -> None:
        self.redis = redis
        self.on_levels = on_levels
        self.timeout = timeout
        self.clock = clock or RedisClock()
        self._reply_time = max(timeout * self.REPLY_SHARE, self.MIN_REPLY_TIME)
        self.sha = hashlib.sha1(bucket_script.SCRIPT.encode()).hexdigest()
        self._queue: list[_Call] = []
        self._held: list[_Call] = []  # charges of failed batches: sent with the next
        # This relay's charges, numbered in the order they are sent, and their mark in Redis.
        self._charges = itertools.count(1)
        self._mark = f"relay:rl:{{charges}}:{secrets.token_hex(8)}".encode()
        self._sender: asyncio.Task[None] | None = None
        self._charge_timer: asyncio.TimerHandle | None = None
        self._answered_at = -math.inf  # loop time the last batch's reply (or failure) came
        # Checks as sent: their keys, then their spec. A client's checks draw the
        # same tuple request after request, so this is worked out once for them
        # (a debit's cost, or a check's `extra`, differs every time: encoded afresh).
        self._encoded: LruCache[tuple[Draw, ...], list[bytes]] = LruCache(MAX_ENCODED)

    async def probe(self) -> None:
        """Whether Redis runs the script and takes its writes now: the link's probe.
        A Redis that came back (maybe another one) gets the script and its clock read
        on the way, as any batch would."""
        await self.draw(_PROBE)

    async def load(self) -> None:
        """SCRIPT LOAD, so EVALSHA finds it (Redis forgets scripts when it restarts), and
        a reading of Redis's clock, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.script_load(bucket_script.SCRIPT)
            pipe.time()
            sent = time.monotonic()
            _, (seconds, micros) = await pipe.execute()
        self.clock.observe(sent, time.monotonic(), seconds + micros / 1_000_000)

    async def close(self) -> None:
        """Send the charges still queued or held (a failed send loses them), then stop."""
        if self._charge_timer is not None:
            self._charge_timer.cancel()
            self._charge_timer = None
        self._queue, self._held = self._held + self._queue, []
        if self._queue and self._sender is None:
            self._start()
        # Left in place until it ends: a charge made meanwhile joins its loop rather than
        # starting a second sender, whose batch could pass one still under way.
        if (sender := self._sender) is not None:
            await asyncio.gather(sender, return_exceptions=True)

    async def draw(
        self,
        draws: Sequence[Draw],
        extra: tuple[Draw, ...] = (),
        on_abandoned: Callable[[Outcome], object] | None = None,
    ) -> Outcome:
        """Decide one request's draws, then `extra`, (all or nothing) and charge them if
        allowed. `extra` is for what differs request after request (a reservation). A
        caller cancelled once its batch was sent is charged all the same: `on_abandoned`
        hears the outcome, to give back what only a caller still there would use."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append(_Call(tuple(draws), future, None, loop.time(), extra, on_abandoned))
        if self._sender is None:
            self._start()
        return await future

    def charge(self, draws: Sequence[Draw], on_error: Callable[[BaseException], object]) -> None:
        """Queue draws nobody waits for, taken in Redis once. If their batch fails they
        are kept for the next, and `on_error` is told (the first time): Redis may not
        have them yet, and may have them already."""
        loop = asyncio.get_running_loop()
        call = _Call(tuple(draws), None, on_error, loop.time(), charge=next(self._charges))
        self._queue.append(call)
        if self._sender is None and self._charge_timer is None:
            self._charge_timer = loop.call_later(self.CHARGE_DELAY, self._send_charges)

    def _send_charges(self) -> None:
        self._charge_timer = None
        if self._queue and self._sender is None:
            self._start()

    def _start(self) -> None:
        self._sender = asyncio.create_task(self._send(), name="relay-rate-limit-batch")

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                # Held charges first: each is sent after every charge numbered before it.
                batch, self._queue, self._held = self._held + self._queue, [], []
                # A caller that stopped waiting (its own timeout) drops out.
                batch = [call for call in batch if call.future is None or not call.future.done()]
                if not batch:
                    continue
                # loop.time() is the monotonic clock RedisClock reads (asyncio and uvloop).
                waiting = [call.at for call in batch if call.future is not None]
                give_up = (min(waiting) if waiting else loop.time()) + self.timeout
                try:
                    # A reply that comes after this is dropped with its connection.
                    async with asyncio.timeout_at(give_up):
                        outcomes = bucket_script.decode(
                            await self._run(batch, give_up),
                            [len(call.draws) + len(call.extra) for call in batch],
                        )
                except LoopLagError as exc:
                    # Nothing was sent. Only the callers waiting are late: the charges
                    # go in the next batch (whose deadline, if they go alone, counts
                    # from now), so a late loop loses none of them.
                    self._queue = [call for call in batch if call.future is None] + self._queue
                    _fail([call for call in batch if call.future is not None], exc)
                    continue
                except Exception as exc:  # the callers queued meanwhile fail too
                    batch, self._queue = batch + self._queue, []
                    self._held = [
                        call._replace(on_error=None) for call in batch if call.future is None
                    ]
                    _fail(batch, exc)
                    continue
                for call, outcome in zip(batch, outcomes, strict=True):
                    if self.on_levels is not None:
                        self.on_levels(call.all_draws, outcome)
                    if call.future is None:
                        continue
                    if not call.future.done():
                        call.future.set_result(outcome)
                    elif call.on_abandoned is not None:
                        call.on_abandoned(outcome)
        finally:
            self._sender = None

    async def _run(self, batch: list[_Call], give_up: float) -> list[int]:
        send_by = give_up - self._reply_time
        if asyncio.get_running_loop().time() >= send_by:
            if self._answered_at >= send_by:  # it queued behind a batch Redis was slow on
                raise LateBatchError("Redis answered the batch before this one too late")
            raise LoopLagError("relay's loop was busy past the rate-limit batch's deadline")
        keys: list[bytes] = [self._mark]
        specs: list[bytes] = []
        for call in batch:
            encoded = self._encoded.get(call.draws) if call.future is not None else None
            if encoded is None:
                encoded = bucket_script.encode(call.draws, call.charge)
                if call.future is not None:
                    self._encoded.put(call.draws, encoded)
            keys += encoded[:-1]
            if call.extra:
                more = bucket_script.encode(call.extra)
                keys += more[:-1]
                specs.append(encoded[-1] + b"," + more[-1] if call.draws else more[-1])
            else:
                specs.append(encoded[-1])
        try:
            reply, sent = await self._evaluate(keys, specs, send_by)
        finally:
            self._answered_at = asyncio.get_running_loop().time()
        self.clock.observe(sent, time.monotonic(), int(reply[0]) / 1_000_000)
        if not reply[1]:
            raise LateBatchError("Redis ran the rate-limit batch after its deadline")
        return list(reply[2:])

    async def _evaluate(
        self, keys: list[bytes], specs: list[bytes], send_by: float
    ) -> tuple[list[Any], float]:
        """The script's reply to a batch, and when (monotonic) it was sent."""
        if self.clock.stale(time.monotonic()):  # first batch, or the first after a lull
            sent = time.monotonic()
            seconds, micros = await self.redis.time()
            self.clock.observe(sent, time.monotonic(), seconds + micros / 1_000_000)
        deadline = str(self.clock.redis_micros(send_by)).encode()
        args = [*keys, bucket_script.PERIOD, deadline, *specs]
        sent = time.monotonic()
        try:
            return await self.redis.evalsha(self.sha, len(keys), *args), sent
        except NoScriptError:
            await self.load()
            sent = time.monotonic()
            return await self.redis.evalsha(self.sha, len(keys), *args), sent


def _fail(calls: list[_Call], exc: Exception) -> None:
    for call in calls:
        if call.future is None:
            if call.on_error is not None:  # told once: a held charge was told already
                call.on_error(exc)
        elif not call.future.done():
            call.future.set_exception(exc)
