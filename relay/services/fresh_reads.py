"""Reads of one key shared by the callers waiting for them, each begun after they came."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FreshReads(Generic[K, V]):
    """Runs `read(key)` once at a time per key, for every caller that came meanwhile.

    A caller never joins a read already under way: that read may have been sent before
    a change the caller could have seen was committed. It waits for the next one, which
    begins when the one under way ends and serves everyone who came during it. So each
    caller sees what was committed before it came, and a burst of callers of one key
    costs at most two reads, one at a time, instead of one each.
    """

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._waiting: dict[K, asyncio.Future[V]] = {}  # the callers of the next read
        self._readers: dict[K, asyncio.Future[None]] = {}

    async def get(self, key: K) -> V:
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(_retrieved)
            if key not in self._readers:
                self._readers[key] = asyncio.ensure_future(self._read_while_waited(key))
        # Shielded: a caller that leaves does not cancel the others' read.
        return await asyncio.shield(waiting)

    async def _read_while_waited(self, key: K) -> None:
        waiting: asyncio.Future[V] | None = None
        try:
            while (waiting := self._waiting.pop(key, None)) is not None:
                # Whoever comes from here on waits for the next read.
                try:
                    value = await self._read(key)
                except Exception as exc:
                    waiting.set_exception(exc)
                else:
                    waiting.set_result(value)
        finally:
            del self._readers[key]
            # Only when this reader was cancelled (the loop is closing): no caller hangs.
            for left in (waiting, self._waiting.pop(key, None)):
                if left is not None and not left.done():
                    left.cancel()


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # read, should every caller have left before it ended
