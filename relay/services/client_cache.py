"""In-process cache of client rows, invalidated by PostgreSQL notifications."""

from __future__ import annotations

from relay.stores.clients import Client, ClientStore
from relay.stores.notifications import Notifications

CHANNEL = "relay_clients"  # notified by the clients table's trigger (sql/001)
_MAX_ENTRIES = 100_000


class ClientCache:
    """Client rows by id, trusted only while the LISTEN connection is live.

    A notification drops one entry; losing the listener drops them all and
    sends every lookup to the database until it is back, so a revoked client
    is never served from a stale copy.
    """

    def __init__(self, store: ClientStore, notifications: Notifications) -> None:
        self.store = store
        self.notifications = notifications
        self._entries: dict[str, Client] = {}
        # Bumped on every invalidation; a row loaded before a bump may be stale.
        self._generation = 0
        notifications.subscribe(CHANNEL, self.invalidate)
        notifications.on_reset(self.clear)

    async def get(self, client_id: str) -> Client | None:
        live = self.notifications.live
        if live:
            client = self._entries.get(client_id)
            if client is not None:
                return client
        generation = self._generation
        client = await self.store.get(client_id)
        if client is not None and live and generation == self._generation:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[client_id] = client
        return client

    def invalidate(self, client_id: str) -> None:
        self._generation += 1
        self._entries.pop(client_id, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
