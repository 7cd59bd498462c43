"""Each pooled PostgreSQL connection: the server process behind it, noted as it
connects, and a cursor that survives the connection having gone stale. (Part of the
driver boundary, with `database`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import aiopg
import psycopg2

from relay.stores.database_failures import connection_died

log = logging.getLogger(__name__)

Cursor = aiopg.Cursor
Connection = aiopg.Connection

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


def server_process(conn: Connection) -> ServerProcess | None:
    """The server process behind a pooled connection (None for one made elsewhere)."""
    return _PROCESSES.get(conn)


# When each pooled connection was made (time.monotonic: the event loop's clock may read
# the same for a whole turn of the loop), noted as it connects.
_MADE_AT: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()


def made_before(conn: Connection, moment: float) -> bool:
    """Whether the pooled connection was made before `moment` (or it is not known when):
    only such a one can have gone stale. Served before or not: the pool makes
    connections it does not hand out at once (its first, as it opens; one made for a
    waiter that took another, released meanwhile)."""
    made = _MADE_AT.get(conn)
    return made is None or made < moment


# What PostgreSQL may write of relay's statements to its own log, per setting: nothing.
# psycopg2 writes every value into a statement's text, and by default the server logs
# the whole text of a statement that fails (log_min_error_statement = error), message
# content with it. relay's statements fail in normal running: two instances' receipt
# batches race and one is refused on purpose, a conversation deleted while its answer
# is written fails the answer's batch, a stuck commit is stopped. An operator's
# log_statement, log_min_duration_statement or sampling (of slow statements, of
# transactions) would log every one of them, or some.
QUIET_LOGGING = {
    "log_min_error_statement": "panic",
    "log_min_duration_statement": "-1",
    "log_statement": "none",
    "log_min_duration_sample": "-1",  # PostgreSQL 13+
    "log_transaction_sample_rate": "0",  # PostgreSQL 12+
}
_loud_logging_told = False


async def on_connect(conn: Connection) -> None:
    """Note the connection's server process (see ServerProcess); keep the server from
    logging the session's statements (see QUIET_LOGGING) where relay's role may say so,
    and say once that it may not otherwise. And a statement relay gave up on (past its
    timeout aiopg closes the connection) is stopped by the server within
    CLIENT_CHECK_MS, instead of running on: a group commit waiting for a lock would
    otherwise commit later, after its clients were told their answers were not saved
    (and, retrying, saved them twice)."""
    names = tuple(QUIET_LOGGING)
    # A setting the server does not have (an older one) is NULL: it logs nothing by it.
    settings = ", ".join(f"current_setting('{name}', true)" for name in names)
    if conn.server_version >= 150000:  # GRANT SET ON PARAMETER came with 15
        may_set = ", ".join(f"has_parameter_privilege('{name}', 'SET')" for name in names)
    else:
        may_set = ", ".join("current_setting('is_superuser') = 'on'" for _ in names)
    async with conn.cursor() as cur:
        await cur.execute(
            f"SELECT pid, backend_start::text, current_user, {settings}, {may_set}"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        pid, started, role, *found = await cur.fetchone()
        values, allowed = found[: len(names)], found[len(names) :]
        statements = []
        if conn.server_version >= 140000:
            statements.append(f"SET client_connection_check_interval = {CLIENT_CHECK_MS}")
        loud = []
        for name, value, may in zip(names, values, allowed, strict=True):
            if value is None or value == QUIET_LOGGING[name]:
                continue
            if may:
                statements.append(f"SET {name} = {QUIET_LOGGING[name]}")
            else:
                loud.append(name)
        if statements:
            await cur.execute("; ".join(statements))
    _PROCESSES[conn] = ServerProcess(pid, started)
    _MADE_AT[conn] = time.monotonic()
    if loud:
        _tell_loud_logging(role, loud)


def _tell_loud_logging(role: str, loud: list[str]) -> None:
    global _loud_logging_told
    if _loud_logging_told:
        return
    _loud_logging_told = True
    if not re.fullmatch(r"[a-z_][a-z0-9_$]*", role):
        role = '"' + role.replace('"', '""') + '"'
    fixes = "; ".join(f"ALTER ROLE {role} SET {name} = {QUIET_LOGGING[name]}" for name in loud)
    log.warning(
        "postgres may write relay's statements, message content included, to its log, and"
        f" relay's role may not turn that off for its sessions; as a superuser run: {fixes}"
        f" (or, on PostgreSQL 15+: GRANT SET ON PARAMETER {', '.join(loud)} TO {role})",
        extra={"settings": loud},
    )


class StaleConnections(Protocol):
    """What a PooledCursor needs of its pool (relay.stores.database.Database)."""

    timeout: float

    async def drop_stale(self, dead: Connection) -> None:
        """Forget `dead` (closed) and the pool's idle connections."""

    async def fresh_cursor(self) -> Cursor:
        """A cursor on a connection of the pool made since."""


# libpq keeps its send buffer as large as the largest statement a connection sent, for
# the connection's life (100 MB sent, 190 MB kept): a connection that sent one longer
# than this is closed once its cursor is done, not pooled again. Only group commits of
# large answers send such statements; a new connection costs a few ms.
LARGE_STATEMENT_CHARS = 1024 * 1024


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

    def __init__(self, db: StaleConnections, cur: Cursor, *, stale_maybe: bool) -> None:
        super().__init__(cur.connection, cur.raw, db.timeout, echo=False)
        self._db = db
        # A connection served before may have gone stale since; a new one has not.
        self._retry_first = stale_maybe
        self.released = False  # its connection is back in the pool (a dead one, replaced)
        self.sent_large = False  # a statement past LARGE_STATEMENT_CHARS: close, not pool
        # A statement failed: aiopg keeps its error for the connection's life (in the
        # queue of its notifications), and with it the frames of its traceback and all
        # they hold (a failed group commit's answers): close, not pool.
        self.failed = False

    async def execute(
        self,
        operation: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        repeatable: bool = False,
        rebuild: Callable[[], str] | None = None,
    ) -> None:
        """`repeatable`: the statement may be sent twice (see the class), whatever it says;
        `rebuild`: what to send instead on a fresh connection (a statement bound to the
        one it was first meant for: relay.stores.database_batch)."""
        with self._noting_failure():
            retry, self._retry_first = self._retry_first, False
            if len(operation) > LARGE_STATEMENT_CHARS:
                self.sent_large = True
            deadline = asyncio.get_running_loop().time() + self._db.timeout
            try:
                await super().execute(operation, parameters, timeout=timeout)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if not (retry and connection_died(exc, self.connection.closed)):
                    raise
                self.released = True
                async with asyncio.timeout_at(deadline):
                    await self._db.drop_stale(self.connection)
                    if not (repeatable or _repeatable(operation)):
                        raise
                    log.warning("postgres connection was stale; statement sent again on a new one")
                    fresh = await self._db.fresh_cursor()
                    self._conn, self._impl, self.released = fresh.connection, fresh.raw, False
                    if rebuild is not None:
                        operation = rebuild()
                    await super().execute(operation, parameters, timeout=timeout)

    @contextlib.contextmanager
    def _noting_failure(self) -> Iterator[None]:
        try:
            yield
        except psycopg2.Error:
            self.failed = True
            raise


def _repeatable(sql: str) -> bool:
    """A single statement that reads or that starts a transaction. (A SELECT here may
    call nextval or pg_terminate_backend, both harmless twice; none that writes.)"""
    return ";" not in sql and sql.lstrip()[:6].upper().startswith(("SELECT", "BEGIN"))
