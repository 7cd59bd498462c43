"""The PostgreSQL driver boundary: the one module that imports aiopg. Beside it,
`database_failures` (what the driver's failures mean) and `database_admin`
(creating databases, reading connection strings) are the only others that import
psycopg2.

Stores get cursors from `Database` and write transactions through `Batch`; every
driver failure on the way becomes `DependencyUnavailableError` (503) once, here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import aiopg
import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from relay.errors import DependencyUnavailableError
from relay.stores.database_failures import (
    OutcomeUnknownError,
    connection_died,
    driver_errors,
    out_of_reach,
    quiet_server_cancels,
    registered,
)

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
# How often `stop_backend` looks whether a terminated process has gone.
_GONE_POLL_SECONDS = 0.01
# How often a busy backend checks that relay is still connected (PostgreSQL 14+).
CLIENT_CHECK_MS = 100


class ServerProcess(NamedTuple):
    """The PostgreSQL process behind a connection: its pid, and when it started. A pid
    alone can name another process on another server (a failover's new primary numbers
    its processes from as low a start) or a later one on the same server."""

    pid: int
    started: str


# Each pooled connection's server process, read once as it connects.
_PROCESSES: weakref.WeakKeyDictionary[Connection, ServerProcess] = weakref.WeakKeyDictionary()


async def _on_connect(conn: Connection) -> None:
    """Note the connection's server process (see ServerProcess). And a statement relay
    gave up on (past its timeout aiopg closes the connection) is stopped by the server
    within CLIENT_CHECK_MS, instead of running on: a group commit waiting for a lock
    would otherwise commit later, after its clients were told their answers were not
    saved (and, retrying, saved them twice)."""
    async with conn.cursor() as cur:
        if conn.server_version >= 140000:
            await cur.execute(f"SET client_connection_check_interval = {CLIENT_CHECK_MS}")
        await cur.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        pid, started = await cur.fetchone()
    _PROCESSES[conn] = ServerProcess(pid, started)


class Database:
    """A pool of autocommit connections; transactions are explicit."""

    def __init__(self, pool: aiopg.Pool, dsn: str, timeout: float) -> None:
        self.pool = pool
        self.dsn = dsn
        self.timeout = timeout
        self._probe: Connection | None = None  # `ping`'s own, outside the pool
        self._probing = asyncio.Lock()
        # Pooled connections that served a cursor already: only such a one can be stale.
        self._served: weakref.WeakSet[Connection] = weakref.WeakSet()

    @classmethod
    async def open(
        cls, dsn: str, *, size: int, timeout: float, recycle: float = IDLE_RECYCLE_SECONDS
    ) -> Database:
        quiet_server_cancels()
        with driver_errors():
            pool = await registered(
                lambda: aiopg.create_pool(
                    dsn,
                    minsize=1,
                    maxsize=size,
                    timeout=timeout,
                    pool_recycle=recycle,
                    on_connect=_on_connect,
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
            conn, served = await self._acquire()
            cur = PooledCursor(self, await conn.cursor(), stale_maybe=served)
            try:
                yield cur
            finally:
                cur.close()
                if not cur.released:
                    await self.pool.release(cur.connection)

    async def _acquire(self) -> tuple[Connection, bool]:
        """A pooled connection, and whether it served before: only then can it be stale."""
        conn = await registered(self.pool.acquire)
        served = conn in self._served
        self._served.add(conn)
        return conn, served

    async def _drop_stale(self, dead: Connection) -> None:
        """Forget `dead` (closed) and the pool's idle connections: what left one stale (a
        failover, a host crash) most likely left them so, and a write is not sent twice."""
        await self.pool.release(dead)
        await self.pool.clear()

    async def _fresh_cursor(self) -> Cursor:
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
        when the block ends, rolled back if it raises. OutcomeUnknownError if it may
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
            raise OutcomeUnknownError(lost, batch.commit_backend) from lost

    async def stop_backend(self, process: ServerProcess) -> bool:
        """Terminate the server process (one whose connection relay lost) and wait, for
        at most `timeout`, until it is gone: a transaction it ran has then committed or
        rolled back for good, and other sessions see which. True once it is gone.

        The process is named by pid and start time, on whatever server relay reaches
        now: after a failover the old primary's is simply not found (what the new one
        holds is then the truth), and no other process is ever terminated; and only
        one of this database and role.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout
        this_one = "pid = %s AND backend_start = %s::timestamptz"
        async with self.cursor() as cur:
            await cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE {this_one} AND datname = current_database() AND usename = current_user",
                process,
            )
            while True:
                await cur.execute(f"SELECT FROM pg_stat_activity WHERE {this_one}", process)
                if await cur.fetchone() is None:
                    return True
                if asyncio.get_running_loop().time() >= deadline:
                    return False
                await asyncio.sleep(_GONE_POLL_SECONDS)

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


class PooledCursor(aiopg.Cursor):
    """A cursor on a pooled connection that sends its first statement once more, on a
    fresh connection, if the connection it was given turns out dead (stale: its server
    went away without relay noticing) and sending it again is safe.

    Safe are a transaction's start (nothing it did can have committed) and a read; a
    connection lost once a statement was sent cannot tell whether the server ran it,
    so any other statement is not sent again. The second try has what is left of the
    first's RELAY_DATABASE_TIMEOUT: a server that is down is not waited for twice.
    (The connection is swapped under aiopg's cursor; aiopg 1.4.0 is its last release.)
    """

    def __init__(self, db: Database, cur: Cursor, *, stale_maybe: bool) -> None:
        super().__init__(cur.connection, cur.raw, db.timeout, echo=False)
        self._db = db
        # A connection served before may have gone stale since; a new one has not.
        self._retry_first = stale_maybe
        self.released = False  # its connection is back in the pool (a dead one, replaced)

    async def execute(
        self,
        operation: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        repeatable: bool = False,
    ) -> None:
        """`repeatable`: the statement may be sent twice (see the class), whatever it says."""
        retry, self._retry_first = self._retry_first, False
        deadline = asyncio.get_running_loop().time() + self._db.timeout
        try:
            await super().execute(operation, parameters, timeout=timeout)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if not (retry and connection_died(exc, self.connection.closed)):
                raise
            self.released = True
            async with asyncio.timeout_at(deadline):
                await self._db._drop_stale(self.connection)
                if not (repeatable or _repeatable(operation)):
                    raise
                log.warning("postgres connection was stale; statement sent again on a new one")
                fresh = await self._db._fresh_cursor()
                self._conn, self._impl, self.released = fresh.connection, fresh.raw, False
                await super().execute(operation, parameters, timeout=timeout)


def _repeatable(sql: str) -> bool:
    """A single statement that reads or that starts a transaction. (A SELECT here may
    call nextval or pg_terminate_backend, both harmless twice; none that writes.)"""
    return ";" not in sql and sql.lstrip()[:6].upper().startswith(("SELECT", "BEGIN"))


class Batch:
    """One transaction sent in as few round trips as possible.

    Each round trip to PostgreSQL costs more than most statements do, so
    statements whose results nobody reads are `defer`red: they go with the next
    `execute` or with the end of the batch, in the order they were given. A
    batch that never needs an answer mid-way is one round trip: its statements
    sent together as a single implicit transaction (PostgreSQL runs a
    multi-statement query atomically and rolls all of it back on an error).
    Statements are bound by psycopg2's `mogrify`, never by string formatting.
    """

    def __init__(self, cur: PooledCursor) -> None:
        self.cur = cur
        self._open = False  # BEGIN sent, COMMIT or ROLLBACK not yet
        self._deferred: list[str] = []
        self._on_rollback: list[Callable[[], None]] = []
        # The server process the COMMIT (or the one-trip transaction) was sent to, once
        # sent; read before sending (a lost connection no longer tells; no round trip).
        self.commit_backend: ServerProcess | None = None

    def bind(self, sql: str, params: Any = None) -> str:
        return sql if params is None else self.cur.mogrify(sql, params).decode()

    async def execute(self, sql: str, params: Any = None) -> None:
        """Run a statement now (after any deferred ones), inside the transaction."""
        statements = [*self._deferred, self.bind(sql, params)]
        opening = not self._open
        if opening:
            statements.insert(0, "BEGIN")
            self._open = True
        self._deferred = []
        # The round trip that opens the transaction commits nothing: safe to send again.
        await self.cur.execute("; ".join(statements), repeatable=opening)

    async def flush(self) -> None:
        """Send the deferred statements now, inside the transaction."""
        await self.execute("SELECT 1")

    def defer(self, sql: str, params: Any = None) -> None:
        self._deferred.append(self.bind(sql, params))

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Call `callback` if the transaction does not commit."""
        self._on_rollback.append(callback)

    async def fetchall(self) -> list[Any]:
        return list(await self.cur.fetchall())

    async def fetchone(self) -> Any:
        return await self.cur.fetchone()

    async def commit(self) -> None:
        statements, self._deferred = self._deferred, []
        if self._open or statements:
            self.commit_backend = _PROCESSES.get(self.cur.connection)
        if self._open:
            await self.cur.execute("; ".join([*statements, "COMMIT"]))
            self._open = False
        elif statements:
            await self.cur.execute("; ".join(statements))

    async def rollback(self) -> None:
        self._deferred = []
        for callback in self._on_rollback:
            callback()
        if self._open:
            self._open = False
            try:
                await self.cur.execute("ROLLBACK")
            except QueryError:
                # The connection is broken; closing it keeps it out of the pool.
                self.cur.connection.close()


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
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def fetch_one(cur: Cursor, query: str, args: Any = None) -> dict[str, Any] | None:
    rows = await fetch_all(cur, query, args)
    return rows[0] if rows else None


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
