"""A transaction written in as few round trips as it can take. (Part of the driver
boundary, with `database`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2

from relay.stores.database_connection import PooledCursor, ServerProcess, server_process


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
            self.commit_backend = server_process(self.cur.connection)
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
            except psycopg2.Error:
                # The connection is broken; closing it keeps it out of the pool.
                self.cur.connection.close()
