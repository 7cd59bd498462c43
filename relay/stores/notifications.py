"""PostgreSQL LISTEN on one dedicated connection, fanned out to in-process subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from relay.errors import DependencyUnavailableError
from relay.stores.database import KEEPALIVE, Connection, connect, listen

log = logging.getLogger(__name__)

Callback = Callable[[str], None]


class Notifications:
    """Keeps a LISTEN connection open, reconnecting with back-off.

    While it is down, notifications may be missed: `live` is False and every
    `on_reset` callback runs, so caches fed by it stop trusting themselves.
    """

    def __init__(self, dsn: str, *, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.live = False
        self._subscribers: defaultdict[str, list[Callback]] = defaultdict(list)
        self._resets: list[Callable[[], None]] = []
        self._connected = asyncio.Event()

    def subscribe(self, channel: str, callback: Callback) -> None:
        self._subscribers[channel].append(callback)

    def on_reset(self, callback: Callable[[], None]) -> None:
        self._resets.append(callback)

    async def wait_live(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await self._listen()
            except Exception as exc:  # down, or broke during LISTEN: keep trying, never give up
                if not isinstance(exc, DependencyUnavailableError):
                    log.warning("notification listener failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                await self._dispatch(conn)
            except Exception as exc:  # the connection broke; anything else is a bug logged here
                log.warning("notification listener lost", extra={"error": type(exc).__name__})
            finally:
                self._set_live(False)
                conn.close()

    async def _listen(self) -> Connection:
        conn = await connect(self.dsn, timeout=self.timeout, **KEEPALIVE)
        try:
            await listen(conn, self._subscribers)
        except BaseException:
            conn.close()
            raise
        # Reset after LISTEN is in place: a change between the two is not lost.
        self._set_live(True)
        return conn

    async def _dispatch(self, conn: Connection) -> None:
        while True:
            notify = await conn.notifies.get()
            for callback in self._subscribers.get(notify.channel, ()):
                callback(notify.payload)

    def _set_live(self, live: bool) -> None:
        self.live = live
        if live:
            self._connected.set()
        else:
            self._connected.clear()
        for callback in self._resets:
            callback()
