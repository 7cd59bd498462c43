"""What every connection relay opens meets on uvloop: a closed poll handle left behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

REGISTER_ATTEMPTS = 3


async def registered(connecting: Callable[[], Awaitable[T]]) -> T:
    """What `connecting` gives (a new connection, or one from a pool, or a response on
    one), however uvloop fares; the last attempt's RuntimeError otherwise.

    When a connection fails, uvloop can keep the closed poll handle of its socket's
    number; registering the next socket given that number (as aiopg and aiohttp do
    while they connect, before anything is sent) raises RuntimeError, whether or not
    the server is up. The connection that failed so holds that number until its error
    is dropped, so another attempt made meanwhile gets another number. Only when
    attempts keep failing so is the server taken for unreachable.
    """
    failures: list[RuntimeError] = []  # kept, and with each the socket number it holds
    for _ in range(REGISTER_ATTEMPTS - 1):
        try:
            return await connecting()
        except RuntimeError as exc:
            failures.append(exc)
    return await connecting()
