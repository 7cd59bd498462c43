"""A pooled connection that sent a large statement is closed, not pooled again: libpq
keeps its send buffer as large as the largest statement, for the connection's life."""

from __future__ import annotations

import asyncio

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
        assert await backend_pid(db) != first  # closed: the next cursor has a new connection
    finally:
        await db.close()


async def test_who_waits_for_the_pool_gets_the_place_a_closed_connection_left(
    database_url, monkeypatch
):
    monkeypatch.setattr(database_connection, "LARGE_STATEMENT_CHARS", 100)
    db = await Database.open(database_url, size=1, timeout=3)
    try:
        large = "SELECT pg_sleep(0.3) /* " + "x" * 100 + " */"

        async def large_statement() -> None:
            async with db.cursor() as cur:
                await cur.execute(large)

        holder = asyncio.create_task(large_statement())
        await asyncio.sleep(0.05)  # the pool's one connection is taken
        started = asyncio.get_running_loop().time()
        await backend_pid(db)  # waits for it, then gets a new one
        await holder
        assert asyncio.get_running_loop().time() - started < 2  # not the 3 s timeout
    finally:
        await db.close()
