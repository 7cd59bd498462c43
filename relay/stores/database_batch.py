"""A transaction written in as few round trips as it can take. (Part of the driver
boundary, with `database`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg2

from relay.stores.database_connection import PooledCursor, ServerProcess, server_process
from relay.stores.database_statements import Prepared, forget_prepared, sent_as

# A statement and its values (None: none to bind).
_Statement = tuple[str | Prepared, Any]


class Batch:
    """One transaction sent in as few round trips as possible.

    Each round trip to PostgreSQL costs more than most statements do, so
    statements whose results nobody reads are `defer`red: they go with the next
    `execute` or with the end of the batch, in the order they were given. A
    batch that never needs an answer mid-way is one round trip: its statements
    sent together as a single implicit transaction (PostgreSQL runs a
    multi-statement query atomically and rolls all of it back on an error).
    Statements are bound by psycopg2's `mogrify`, never by string formatting, as
    they are sent; one `prepared` (relay.stores.database_statements) goes as EXECUTE.
    """

    def __init__(self, cur: PooledCursor) -> None:
        self.cur = cur
        self._open = False  # BEGIN sent, COMMIT or ROLLBACK not yet
        self._deferred: list[_Statement] = []
        self._on_rollback: list[Callable[[], None]] = []
        self._prepared = False  # sent a PREPARE: a rollback leaves unknown which ran
        # The server process the COMMIT (or the one-trip transaction) was sent to, once
        # sent; read before sending (a lost connection no longer tells; no round trip).
        self.commit_backend: ServerProcess | None = None

    async def execute(self, sql: str | Prepared, params: Any = None) -> None:
        """Run a statement now (after any deferred ones), inside the transaction."""
        statements = [*self._deferred, (sql, params)]
        opening = not self._open
        if opening:
            statements.insert(0, ("BEGIN", None))
            self._open = True
        self._deferred = []
        # The round trip that opens the transaction commits nothing: safe to send again,
        # on a fresh connection if this one was stale (where it is bound afresh).
        await self.cur.execute(
            self._text(statements), repeatable=opening, rebuild=lambda: self._text(statements)
        )

    async def flush(self) -> None:
        """Send the deferred statements now, inside the transaction."""
        await self.execute("SELECT 1")

    def defer(self, sql: str | Prepared, params: Any = None) -> None:
        self._deferred.append((sql, params))

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Call `callback` if the transaction does not commit."""
        self._on_rollback.append(callback)

    async def fetchall(self) -> list[Any]:
        return list(await self.cur.fetchall())

    async def fetchone(self) -> Any:
        return await self.cur.fetchone()

    async def fetch_mapping(self) -> dict[str, Any] | None:
        """The last statement's first row, by column name (as `fetch_one` gives it)."""
        row = await self.cur.fetchone()
        return None if row is None else as_mappings(self.cur, [row])[0]

    async def commit(self) -> None:
        statements, self._deferred = self._deferred, []
        if self._open or statements:
            self.commit_backend = server_process(self.cur.connection)
        if self._open:
            await self.cur.execute(self._text([*statements, ("COMMIT", None)]))
            self._open = False
        elif statements:
            await self.cur.execute(self._text(statements))

    def _text(self, statements: list[_Statement]) -> str:
        """The statements as one query for this connection, bound by psycopg2's
        `mogrify`, each prepared one as EXECUTE (after its PREPARE, if it is new here)."""
        conn, cur = self.cur.connection, self.cur
        sent: list[str] = []
        for statement, params in statements:
            before = len(sent)
            sql = sent_as(conn, statement, sent)
            if len(sent) > before:  # noted as prepared here from now on, sent or not
                self._prepared = True
            sent.append(sql if params is None else cur.mogrify(sql, params).decode())
        return "; ".join(sent)

    async def rollback(self) -> None:
        self._deferred = []
        if self._prepared:
            forget_prepared(self.cur.connection)
        for callback in self._on_rollback:
            callback()
        if self._open:
            self._open = False
            try:
                await self.cur.execute("ROLLBACK")
            except psycopg2.Error:
                # The connection is broken; closing it keeps it out of the pool.
                self.cur.connection.close()


def as_mappings(cur: Any, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows the cursor's last statement returned, each by column name."""
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in rows]
