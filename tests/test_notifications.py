"""The LISTEN connection keeps coming back, whatever broke it, and delivers notifications."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from relay.stores.database import Connection, Database, connect
from relay.stores.history import EVERYONE, HISTORY_CHANNEL, notify_clients
from relay.stores.notifications import Notifications


class FlakyNotifications(Notifications):
    """Fails the first LISTEN with an error that is not 'server unavailable'."""

    failures = 1

    async def _listen(self) -> Connection:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the connection broke half-way through LISTEN")
        return await super()._listen()


async def test_listener_survives_an_unexpected_error_and_delivers(database_url):
    notifications = FlakyNotifications(database_url, timeout=5)
    received: list[str] = []
    arrived = asyncio.Event()
    resets: list[bool] = []
    notifications.subscribe(
        "relay_test_channel", lambda payload: (received.append(payload), arrived.set())
    )
    notifications.on_reset(lambda: resets.append(notifications.live))
    task = asyncio.create_task(notifications.run())
    try:
        assert await notifications.wait_live(10)
        assert notifications.failures == 0
        assert resets == [True]

        conn = await connect(database_url, timeout=5)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT pg_notify('relay_test_channel', 'hello')")
        finally:
            conn.close()
        async with asyncio.timeout(5):
            await arrived.wait()
        assert received == ["hello"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_batch_naming_many_clients_notifies_each_of_them(database_url):
    # Past what one NOTIFY payload holds (8,000 bytes), not "everyone".
    clients = [str(uuid.uuid4()) for _ in range(600)]
    listener = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=1, timeout=5)
    try:
        async with listener.cursor() as cur:
            await cur.execute(f"LISTEN {HISTORY_CHANNEL}")
        async with db.batch() as tx:
            notify_clients(tx, clients + clients[:10])
        named: list[str] = []
        while len(named) < len(clients):
            notify = await asyncio.wait_for(listener.notifies.get(), 5)
            assert len(notify.payload.encode()) < 8000 and notify.payload != EVERYONE
            named += notify.payload.split(",")
    finally:
        await db.close()
        await listener.close()
    assert sorted(named) == sorted(clients)
