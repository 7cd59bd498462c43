"""The PostgreSQL driver boundary: this module and its parts are the only ones that
import aiopg or psycopg2: `database_connection` (each pooled connection's server
process, and a cursor that survives a stale connection), `database_batch` (a
transaction in as few round trips as it can take), `database_statements`
(statements prepared once per connection), `database_failures` (what the driver's
failures mean) and `database_admin` (creating databases, reading connection
strings).

Stores get cursors from `Database` and write transactions through `Batch`; every
driver failure on the way becomes `DependencyUnavailableError` (503) once, here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiopg
import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from relay.errors import DependencyUnavailableError
from relay.stores.database_batch import Batch, as_mappings
from relay.stores.database_connection import (
    PooledCursor,
    made_before,
    on_connect,
)
from relay.stores.database_connection import ServerProcess as ServerProcess
from relay.stores.database_failures import (
    UnconfirmedCommitError,
    driver_errors,
    out_of_reach,
    quiet_driver_noise,
    registered,
    unavailable,
)
from relay.stores.database_statements import Prepared as Prepared
from relay.stores.database_statements import prepared as prepared

log = logging.getLogger(__name__)

Cursor = aiopg.Cursor
Connection = aiopg.Connection

UniqueViolation = psycopg2.errors.UniqueViolation
ForeignKeyViolation = psycopg2.errors.ForeignKeyViolation
QueryError = psycopg2.Error
# TCP keepalives, so that a server that vanished without closing its sockets (a host
# crash, a failover) is noticed on idle connections too, instead of by the next
# request each of them serves.
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    # Sent bytes unacknowledged this long (ms) mean the host is gone: a statement sent on
    # a connection to a crashed host fails then (measured: 2.4 s), within the default
    # RELAY_DATABASE_TIMEOUT rather than at its end, leaving time to send it again on a
    # fresh connection. A server that is only slow acknowledges at once. Keepalives give
    # up at their first unanswered probe past it: within 15 s of a host's crash, not 25.
    "tcp_user_timeout": 2000,
}
# A pooled connection idle this long is closed rather than used again: had its server
# gone in the last seconds, before keepalives noticed (up to 15 s), the first requests
# after a quiet spell would meet it, writes included, which are not sent twice. It costs
# a new connection (about 7 ms on one host) only while traffic is this sparse, nothing
# per request otherwise (the pool compares times as it hands out connections).
IDLE_RECYCLE_SECONDS = 30.0


class Database:
    """A pool of autocommit connections; transactions are explicit."""

    def __init__(self, pool: aiopg.Pool, dsn: str, timeout: float) -> None:
        self.pool = pool
        self.dsn = dsn
        self.timeout = timeout
        self._probe: Connection | None = None  # `ping`'s own, outside the pool
        self._probing = asyncio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, *, size: int, timeout: float, recycle: float = IDLE_RECYCLE_SECONDS
    ) -> Database:
        quiet_driver_noise()
        with driver_errors():
            pool = await registered(
                lambda: aiopg.create_pool(
                    dsn,
                    minsize=1,
                    maxsize=size,
                    timeout=timeout,
                    pool_recycle=recycle,
                    on_connect=on_connect,
                    **KEEPALIVE,
                )
            )
        return cls(pool, dsn, timeout)

    async def close(self) -> None:
        self._forget_probe()
        self.pool.close()
        await self.pool.wait_closed()

    @asynccontextmanager
    async def cursor(self) -> AsyncIterator[PooledCursor]:
        """A cursor in autocommit mode: each statement commits on its own.

        `transaction` and `batch` are built on it, so its error mapping covers theirs,
        their ROLLBACK and COMMIT included."""
        with driver_errors():
            conn, old = await self._acquire()
            cur = PooledCursor(self, await conn.cursor(), stale_maybe=old)
            try:
                yield cur
            finally:
                cur.close()
                if not cur.released:
                    released = self.pool.release(cur.connection)  # and wakes who waits
                    if cur.sent_large or cur.failed:
                        # Closed once back (aiopg wakes no one for a closed one): the pool
                        # drops it as it hands out the next, and what it held goes.
                        cur.connection.close()
                    await released

    async def _acquire(self) -> tuple[Connection, bool]:
        """A pooled connection, and whether it was made before it was asked for: only
        then can it be stale."""
        asked = time.monotonic()
        attempts = (self.pool.maxsize or 1) + 1
        for attempt in range(attempts):
            try:
                conn = await registered(self.pool.acquire, only_waited=self._pool_full)
            except AssertionError as exc:
                if not _handed_out_closed(exc):
                    raise
                closed = exc  # dropped from the pool by that: the next one, then
                continue
            return conn, attempt == attempts - 1 or made_before(conn, asked)
        # Every one it handed out was closed (found so while others were being made).
        raise unavailable(closed)

    def _pool_full(self) -> bool:
        """Whether the pool has all the connections it may make: one asked for then waits
        for a free one, and makes none."""
        most = self.pool.maxsize
        return most is not None and most > 0 and self.pool.size >= most

    async def drop_stale(self, dead: Connection) -> None:
        """Forget `dead` (closed) and the pool's idle connections: what left one stale (a
        failover, a host crash) most likely left them so, and a write is not sent twice."""
        await self.pool.release(dead)
        await self.pool.clear()

    async def fresh_cursor(self) -> Cursor:
        conn, _ = await self._acquire()
        return await conn.cursor()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Cursor]:
        """A cursor inside BEGIN … COMMIT; an exception rolls back."""
        async with self.cursor() as cur, cur.begin():
            yield cur

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """A transaction in as few round trips as it can take (see `Batch`); committed
        when the block ends, rolled back if it raises. UnconfirmedCommitError if it may
        have committed although relay could not learn that it did."""
        batch: Batch | None = None
        try:
            async with self.cursor() as cur:
                batch = Batch(cur)
                try:
                    yield batch
                    await batch.commit()
                except BaseException:
                    await batch.rollback()
                    raise
        except DependencyUnavailableError as lost:
            if batch is None or batch.commit_backend is None or not out_of_reach(lost):
                raise  # never sent its COMMIT, or the server refused it: rolled back
            raise UnconfirmedCommitError(lost, batch.commit_backend) from lost

    async def ping(self) -> None:
        """SELECT 1 on a connection of its own, outside the pool (for /health).

        A pool whose every connection is busy (slow searches, commits waiting on a
        lock) is not a server that is down. Probed through the pool, it read as one,
        and a load balancer would take every busy instance out at once. A kept
        connection that fails is replaced and tried once more: it may only be
        stale (the server restarted since), which says nothing of the server now.
        """
        async with self._probing:
            for last_try in (False, True):
                probe, fresh = self._probe, False
                if probe is None or probe.closed:
                    self._forget_probe()
                    probe = self._probe = await connect(self.dsn, self.timeout, **KEEPALIVE)
                    fresh = True
                try:
                    with driver_errors():
                        async with probe.cursor() as cur:
                            await cur.execute("SELECT 1")
                    return
                except Exception:
                    self._forget_probe()
                    if fresh or last_try:
                        raise
                except BaseException:  # cancelled (the probe's time is up): no second try
                    self._forget_probe()
                    raise

    def _forget_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def pool_stats(self) -> dict[str, int]:
        return {"size": self.pool.size, "free": self.pool.freesize, "max": self.pool.maxsize or 0}


def _handed_out_closed(error: AssertionError) -> bool:
    """Whether aiopg's pool refused to hand out a closed connection it found in its
    free list (`assert not conn.closed, conn`), having taken it out. It checks only
    before it waits: one closed meanwhile (a large one relay closes once released, one
    the server closed) is found so while another task waits to connect."""
    return bool(error.args) and isinstance(error.args[0], Connection) and error.args[0].closed


async def listen(conn: Connection, channels: Iterable[str]) -> None:
    """LISTEN on `channels`, its failures mapped like any other statement's (a
    cancelled LISTEN must not pass for the listener task's own cancellation)."""
    with driver_errors():
        async with conn.cursor() as cur:
            for channel in channels:
                await cur.execute(f"LISTEN {quote_identifier(channel)}")


async def connect(dsn: str, timeout: float, **options: Any) -> Connection:
    """A connection of its own, outside the pool (LISTEN, migrations)."""
    with driver_errors():
        return await registered(lambda: aiopg.connect(dsn, timeout=timeout, **options))


def json_rows(rows: Sequence[Any]) -> str:
    """Rows (dicts or dataclasses) as one JSON document, bound as the one parameter of
    `json_to_recordset(%s::json)`: psycopg2 then quotes a single string instead of
    adapting every value of every row, several times faster for a batch."""
    return orjson.dumps(rows).decode()


async def fetch_all(cur: Cursor, query: str, args: Any = None) -> list[dict[str, Any]]:
    await cur.execute(query, args)
    return as_mappings(cur, await cur.fetchall())


async def fetch_one(cur: Cursor, query: str, args: Any = None) -> dict[str, Any] | None:
    rows = await fetch_all(cur, query, args)
    return rows[0] if rows else None


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
