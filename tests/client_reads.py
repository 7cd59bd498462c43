"""relay's real client store and listener, watched: its reads counted, held, its notices heard."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.appkeys import DATABASE
from relay.services.client_cache import CHANNEL
from relay.stores.clients import Client, ClientStore
from relay.stores.database import Database, fetch_all
from relay.stores.notifications import Notifications
from tests.history_calls import execute

# The server processes of LISTEN connections on the current database.
_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
)


class CountedStore(ClientStore):
    """The real store, counting its reads; `held` keeps each read's answer (its query
    done) until set, like a database slow to answer."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reads = 0
        self.read = asyncio.Event()
        self.held = asyncio.Event()
        self.held.set()

    async def get(self, client_id: str) -> Client | None:
        self.reads += 1
        client = await super().get(client_id)
        self.read.set()
        await self.held.wait()
        return client


@contextlib.asynccontextmanager
async def counted_store(database_url: str) -> AsyncIterator[CountedStore]:
    db = await Database.open(database_url, size=4, timeout=5)
    try:
        yield CountedStore(db)
    finally:
        await db.close()


async def new_client(store: ClientStore, **values: Any) -> Client:
    """A client stored for real (an insert: no notice, as the trigger sends none)."""
    return await store.create(name="cached", key_id=uuid.uuid4().hex[:16], key_hash="x", **values)


class Heard:
    """What the listener passed on: the client ids of its notices, each once the
    subscribers before this one (the cache) had it, and its resets (`live` then)."""

    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications
        self.notices: asyncio.Queue[str] = asyncio.Queue()
        self.resets: asyncio.Queue[bool] = asyncio.Queue()
        notifications.subscribe(CHANNEL, self.notices.put_nowait)
        notifications.on_reset(lambda: self.resets.put_nowait(notifications.live))

    async def notice(self) -> str:
        async with asyncio.timeout(5):
            return await self.notices.get()

    async def reset(self) -> bool:
        async with asyncio.timeout(10):
            return await self.resets.get()


@contextlib.asynccontextmanager
async def listening(notifications: Notifications) -> AsyncIterator[Heard]:
    """The listener running, live, for the block; subscribe before entering."""
    heard = Heard(notifications)
    task = asyncio.create_task(notifications.run())
    try:
        assert await heard.reset() is True
        yield heard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def notify(database_url: str, client_id: str) -> None:
    """A notice naming `client_id`, as the clients table's trigger sends one."""
    await execute(database_url, "SELECT pg_notify(%s, %s)", (CHANNEL, client_id))


async def lose_listener(database_url: str, heard: Heard) -> None:
    """End the LISTEN connection's server process and wait until it is back."""
    await execute(database_url, f"SELECT pg_terminate_backend(pid) FROM ({_LISTENERS}) listeners")
    assert await heard.reset() is False
    assert await heard.reset() is True


async def listener_pids(app: web.Application) -> list[int]:
    async with app[DATABASE].cursor() as cur:
        rows = await fetch_all(cur, _LISTENERS)
    return [row["pid"] for row in rows]


async def lose_relay_listener(http: TestClient) -> None:
    """End the server process of the LISTEN connection of relay under `http`; return
    once another is up, so relay has noticed the loss."""
    [listener] = await listener_pids(http.app)
    async with http.app[DATABASE].cursor() as cur:
        await cur.execute("SELECT pg_terminate_backend(%s)", (listener,))
    pids = [listener]
    async with asyncio.timeout(10):
        while not pids or listener in pids:
            await asyncio.sleep(0.02)
            pids = await listener_pids(http.app)
