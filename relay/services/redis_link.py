"""Whether Redis is usable: said once per outage, and probed in the background while not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from relay.metrics import REDIS_ERRORS, REDIS_UP

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
# An outage is said to be over once Redis has stayed usable this long: a link
# that keeps failing again (a loop lagging past the timeout) is one outage, not many.
SETTLE_SECONDS = 3.0


class RedisLink:
    """Up until a call fails; then down, with requests served without Redis, until a probe passes.

    While down no request waits on Redis: one background task retries every
    `retry` seconds, so a dead Redis costs one timeout per outage, not one per request.
    `error` names what made it go down, while it is down.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        timeout: float,
        retry: float = RETRY_SECONDS,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self._probe = probe
        self.timeout = timeout
        self.retry = retry
        self.settle = settle
        self.up = True
        self.error: str | None = None
        REDIS_UP.set(1)
        self._task: asyncio.Task[None] | None = None
        self._settling: asyncio.TimerHandle | None = None  # an outage said, not yet over
        self.on_up: Callable[[], object] | None = None  # told each time a probe brings it back

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
        self.error = type(exc).__name__
        REDIS_UP.set(0)
        if self._settling is not None:  # back too briefly: the same outage goes on
            self._settling.cancel()
            self._settling = None
        else:
            log.warning("redis unavailable", extra={"error": self.error})
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
            self.error = None
            REDIS_UP.set(1)
            self._task = None
            self._settling = asyncio.get_running_loop().call_later(self.settle, self._settled)
            if self.on_up is not None:
                self.on_up()
            return

    def _settled(self) -> None:
        self._settling = None
        log.warning("redis available again")

    async def close(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
