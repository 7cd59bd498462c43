"""A pooled connection that sent a large statement is closed, not pooled again: libpq
keeps its send buffer as large as the largest statement, for the connection's life."""

from __future__ import annotations

import relay.stores.database_connection as database_connection
from relay.stores.database import Database


async def backend_pid(db: Database, statement: str = "SELECT pg_backend_pid()") -> int:
    async with db.cursor() as cur:
        await cur.execute(statement)
        return int((await cur.fetchone())[0])


async def test_a_connection_that_sent_a_large_statement_is_not_pooled_again(
    database_url, monkeypatch
):
    monkeypatch.setattr(database_connection, "LARGE_STATEMENT_CHARS", 100)
    db = await Database.open(database_url, size=1, timeout=10)
    try:
        first = await backend_pid(db)
        assert await backend_pid(db) == first  # a small statement: the connection is kept
        large = "SELECT pg_backend_pid() /* " + "x" * 100 + " */"
        assert await backend_pid(db, large) == first
        assert db.pool.freesize == 0  # closed, not pooled
        assert await backend_pid(db) != first  # the next cursor has a new connection
    finally:
        await db.close()
