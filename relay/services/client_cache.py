"""In-process cache of client rows, invalidated by PostgreSQL notifications."""

from __future__ import annotations

import asyncio
import logging

from relay.drain import InFlight, Stop
from relay.errors import AuthenticationError, RelayError
from relay.lru import LruCache
from relay.services.fresh_reads import FreshReads
from relay.stores.clients import Client, ClientStore
from relay.stores.notifications import Notifications

CHANNEL = "relay_clients"  # notified by the clients table's trigger (sql/001)
# A row takes some 650 bytes: 6.5 MiB at most.
MAX_ENTRIES = 10_000

log = logging.getLogger(__name__)


def token_revoked() -> AuthenticationError:
    return AuthenticationError(
        "The access token has been revoked.", code="token_revoked", rejected=True
    )


class ClientCache:
    """Client rows by id, trusted only while the LISTEN connection is live.

    An id with no row is remembered too (None), so the tokens of a deleted
    client cost no query each. A notification drops one entry; losing the
    listener drops them all and sends every lookup to the database until it
    is back, so a revoked client is never served from a stale copy. A client
    that changed while it holds streams or polls open in `in_flight` is read
    again, and if it is now disabled, deleted or at another key version, they
    end with token_revoked.
    """

    def __init__(
        self, store: ClientStore, notifications: Notifications, in_flight: InFlight | None = None
    ) -> None:
        self.store = store
        self.notifications = notifications
        self.in_flight = in_flight
        self._checks: set[asyncio.Future[None]] = set()
        self._entries: LruCache[str, Client | None] = LruCache(MAX_ENTRIES)
        # Bumped on every invalidation; a row loaded before a bump may be stale.
        self._generation = 0
        # Loads under way, by client and generation: the requests that miss together
        # (a burst after a restart, or after the client changed) share one query
        # instead of each taking a database connection of the pool.
        self._loading: dict[tuple[str, int], asyncio.Future[Client | None]] = {}
        # Lookups while not listening: each gets a read begun after it came, shared with
        # the lookups of the same client that came while the read before it ran.
        self._reads: FreshReads[str, Client | None] = FreshReads(store.get)
        notifications.subscribe(CHANNEL, self.invalidate)
        notifications.on_reset(self.clear)
        if in_flight is not None:
            in_flight.on_hold = self._on_hold

    async def get(self, client_id: str) -> Client | None:
        if not self.notifications.live:
            # Nothing says when a row goes stale: each lookup reads it afresh.
            return await self._reads.get(client_id)
        if client_id in self._entries:
            return self._entries.get(client_id)
        key = (client_id, self._generation)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(client_id, key[1]))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        # Shielded: a caller that leaves does not cancel the others' load.
        return await asyncio.shield(loading)

    def cached(self, client_id: str) -> Client | None:
        """The client's row as cached now, without reading: None when there is none
        (not read since it changed, or deleted) or nothing says when it goes stale."""
        return self._entries.get(client_id) if self.notifications.live else None

    async def _load(self, client_id: str, generation: int) -> Client | None:
        client = await self.store.get(client_id)
        # A deleted client's id is never notified again, and ids are random uuids no
        # new client takes (inserts notify nothing): its None stays until evicted.
        if self.notifications.live and generation == self._generation:
            self._entries.put(client_id, client)
        return client

    def _loaded(self, key: tuple[str, int], done: asyncio.Future[Client | None]) -> None:
        del self._loading[key]
        if not done.cancelled():
            done.exception()  # read, should every caller have left before it ended

    def invalidate(self, client_id: str) -> None:
        self._generation += 1
        self._entries.pop(client_id)
        if self.in_flight is not None and self.in_flight.holds(client_id):
            self._check(self.in_flight, client_id)

    def _on_hold(self, client_id: str, stop: Stop) -> None:
        """A stream or poll of this client is opening. Its request was admitted by the
        row cached then; the client may have changed since (its notice already handled):
        this one is held against the entry cached now (the others were when they
        opened: nothing per stream already open), or, when there is none, all the
        client's are checked afresh."""
        if not self.notifications.live or self.in_flight is None:
            return
        if client_id in self._entries:
            entry = self._entries.get(client_id)
            if entry is None or not entry.active or entry.key_version != stop.key_version:
                # Once it has opened, as after a check that reads the database.
                asyncio.get_running_loop().call_soon(_end_opened, stop, client_id)
        else:
            self._check(self.in_flight, client_id)

    def _check(self, in_flight: InFlight, client_id: str) -> None:
        check = asyncio.ensure_future(self._read_and_end_revoked(in_flight, client_id))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _read_and_end_revoked(self, in_flight: InFlight, client_id: str) -> None:
        try:
            client = await self.get(client_id)  # read afresh: the entry was just dropped
        except RelayError as exc:
            # The next request is refused or admitted by the database; these go on.
            log.warning("cannot check a changed client's open streams", extra={"error": str(exc)})
            return
        _end_revoked(in_flight, client_id, client)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        # Listening again: a client revoked while no notice could come is found now.
        if self.notifications.live and self.in_flight is not None:
            for client_id in self.in_flight.held_clients():
                self._check(self.in_flight, client_id)


def _end_revoked(in_flight: InFlight, client_id: str, client: Client | None) -> None:
    """End what the client holds open unless `client` (its row, None when deleted) is
    active at that key version."""
    valid = client.key_version if client is not None and client.active else None
    if ended := in_flight.revoke(client_id, valid, token_revoked):
        log.info("revoked client's streams ended", extra={"client_id": client_id, "ended": ended})


def _end_opened(stop: Stop, client_id: str) -> None:
    if not stop.is_set():
        stop.end(token_revoked())
        log.info("revoked client's streams ended", extra={"client_id": client_id, "ended": 1})
