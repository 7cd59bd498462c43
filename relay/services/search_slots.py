"""How many history searches run at once: a few per instance, fewer per client.

A search holds a pooled database connection for as long as it runs (up to most of
RELAY_DATABASE_TIMEOUT), and its CPU on the server is what chats and history writes
would use. Without a bound, one client's burst of costly searches took every
connection of the pool and kept other clients' chats waiting for seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from relay.errors import BusyError, RateLimitError

# The share of the pool searches may hold at once, and of that, one client's share.
POOL_SHARE = 4  # a quarter: 5 of the default 20 connections
CLIENT_SHARE = 2  # half of those: 2
# How long a search waits for a slot before it is refused (and told when to retry).
WAIT_S = 1.0
RETRY_AFTER = {"Retry-After": "1"}


class TooManySearchesError(RateLimitError):
    """This client already runs as many searches as one client may, on this instance."""

    code = "too_many_searches"

    def __init__(self, most: int) -> None:
        super().__init__(
            f"You have {most} searches running, as many as relay runs for one client"
            " at once; retry after Retry-After.",
            headers=dict(RETRY_AFTER),
        )


class SearchesBusyError(BusyError):
    """This instance runs as many searches (of all clients) as it gives the database."""

    code = "searches_busy"

    def __init__(self) -> None:
        super().__init__(
            "relay is running as many searches as it can at once; retry after Retry-After."
        )


@dataclass
class _ClientSlots:
    running: asyncio.Semaphore
    users: int = field(default=0)  # searches running or waiting: gone at 0


class SearchSlots:
    def __init__(self, most: int, most_per_client: int, *, wait_s: float = WAIT_S) -> None:
        self.most = most
        self.most_per_client = most_per_client
        self.wait_s = wait_s
        self._running = asyncio.Semaphore(most)
        self._clients: dict[str, _ClientSlots] = {}

    @classmethod
    def for_pool(cls, pool_size: int) -> SearchSlots:
        most = max(1, pool_size // POOL_SHARE)
        return cls(most, max(1, most // CLIENT_SHARE))

    @asynccontextmanager
    async def slot(self, client_id: str) -> AsyncIterator[None]:
        """Run the block as one of this client's and this instance's searches; refused
        (TooManySearchesError, SearchesBusyError) if none is free within `wait_s`."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _ClientSlots(
                asyncio.Semaphore(self.most_per_client)
            )
        client.users += 1
        try:
            if not await _taken(client.running, deadline):
                raise TooManySearchesError(self.most_per_client)
            try:
                if not await _taken(self._running, deadline):
                    raise SearchesBusyError()
                try:
                    yield
                finally:
                    self._running.release()
            finally:
                client.running.release()
        finally:
            client.users -= 1
            if not client.users:
                del self._clients[client_id]


async def _taken(slots: asyncio.Semaphore, deadline: float) -> bool:
    try:
        async with asyncio.timeout_at(deadline):
            await slots.acquire()
    except TimeoutError:
        return False
    return True
