"""The LISTEN connection keeps coming back, whatever broke it, and delivers notifications."""

from __future__ import annotations

import asyncio
import contextlib

from relay.stores.database import Connection, connect
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
