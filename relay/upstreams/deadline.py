"""A bound on each wait of a long exchange, kept by one timer instead of one per wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class WaitDeadline:
    """Calls `on_expiry` once a wait marked by `begin()` … `end()` lasts `seconds`.

    A stream waits tens of thousands of times a second (for the provider's next
    bytes, for the client to take relay's); a timer armed per wait would cost
    more than the wait. Here one timer per exchange moves only when it fires:
    not waiting then, the allowance starts again at the next wait.
    """

    __slots__ = ("_loop", "_on_expiry", "_seconds", "_since", "_timer", "expired")

    def __init__(self, seconds: float, on_expiry: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._on_expiry = on_expiry
        self._since: float | None = None
        self.expired = False
        self._timer = self._loop.call_later(seconds, self._check)

    def begin(self) -> None:
        self._since = self._loop.time()

    def end(self) -> None:
        self._since = None

    def shorten(self, seconds: float) -> None:
        """From now on a wait may last `seconds`, if that is less than before."""
        if seconds < self._seconds:
            self._seconds = seconds
            self._timer.cancel()
            self._check()

    def close(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        since, now = self._since, self._loop.time()
        if since is not None and now - since >= self._seconds:
            self.expired = True
            self._on_expiry()
            return
        self._timer = self._loop.call_at(
            (now if since is None else since) + self._seconds, self._check
        )
