"""Whether Redis is usable: said once per change, and probed in the background while not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from relay.metrics import REDIS_ERRORS, REDIS_UP

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class RedisLink:
    """Up until a call fails; then down, with requests served without Redis, until a probe passes.

    While down no request waits on Redis: one background task retries every
    `retry` seconds, so a dead Redis costs one timeout per outage, not one per request.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        timeout: float,
        retry: float = RETRY_SECONDS,
    ) -> None:
        self._probe = probe
        self.timeout = timeout
        self.retry = retry
        self.up = True
        REDIS_UP.set(1)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Probe once at start-up; relay starts anyway when Redis is not there."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._probe()
        except Exception as exc:  # any failure means "not usable now"; the probe retries
            self.lost(exc)

    def lost(self, exc: BaseException) -> None:
        REDIS_ERRORS.inc()
        if not self.up:
            return
        self.up = False
        REDIS_UP.set(0)
        log.warning("redis unavailable", extra={"error": type(exc).__name__})
        self._task = asyncio.create_task(self._reconnect(), name="relay-redis-reconnect")

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self.retry)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._probe()
            except Exception:  # still down; said once already, counted each time
                REDIS_ERRORS.inc()
                continue
            self.up = True
            REDIS_UP.set(1)
            self._task = None
            log.warning("redis available again")
            return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
