"""PostgreSQL unreachable: every attempt to reach it is a 503's error, on relay's loop."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import uvloop

from relay.devservers import free_port
from relay.errors import DependencyUnavailableError
from relay.stores.database import KEEPALIVE, Database, QueryError, connect


async def test_a_refused_server_is_unavailable_every_time_not_every_other():
    """uvloop keeps the poll handle of a refused connection's socket number, closed;
    the next socket given that number fails to register with a RuntimeError, which
    would be a 500 with a traceback for every other request while PostgreSQL is down."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/relay"
    for _ in range(4):
        with pytest.raises(DependencyUnavailableError):
            await Database.open(url, size=2, timeout=2)
        with pytest.raises(DependencyUnavailableError):
            await connect(url, timeout=2)


async def test_pooled_connections_keep_alive_like_the_listener(database_url):
    """TCP keepalives let a server that vanished without closing its sockets be noticed
    on idle connections too, not by the next request each of them serves."""
    db = await Database.open(database_url, size=1, timeout=5)
    try:
        async with db.pool.acquire() as conn:
            parameters = conn.raw.get_dsn_parameters()
    finally:
        await db.close()
    assert {name: parameters[name] for name in KEEPALIVE} == {
        name: str(value) for name, value in KEEPALIVE.items()
    }


async def test_a_server_back_after_refusals_is_reached_at_once(database_url):
    """The poll handles refused connections left behind must not cost the first
    connections to a server that answers (the next socket may get their numbers)."""
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/relay"
    for _ in range(6):
        with pytest.raises(DependencyUnavailableError):
            await connect(refused, timeout=2)
        conn = await connect(database_url, timeout=5)
        conn.close()


async def test_a_pool_that_keeps_handing_out_closed_connections_is_unavailable(
    database_url, monkeypatch
):
    # aiopg's pool fails its own assert on a closed connection in its free list (one
    # relay closed once released): the next is taken, but not without end.
    closed = await connect(database_url, timeout=5)
    closed.close()
    db = await Database.open(database_url, size=2, timeout=5)
    handed_out = 0

    async def acquire_closed():
        nonlocal handed_out
        handed_out += 1
        raise AssertionError(closed)

    monkeypatch.setattr(db.pool, "acquire", acquire_closed)
    try:
        with pytest.raises(DependencyUnavailableError):
            async with db.cursor():
                pass
        assert handed_out == 3  # every connection the pool may hold, and one more
    finally:
        monkeypatch.undo()
        await db.close()


async def test_a_connection_a_statement_failed_on_is_not_pooled_again(database_url):
    # aiopg keeps a failed statement's error for its connection's life, and with it the
    # frames of its traceback: what they held (a failed group commit's answers) with it.
    db = await Database.open(database_url, size=1, timeout=5)
    try:
        async with db.cursor() as cur:
            await cur.execute("SELECT pg_backend_pid()")
            (first,) = await cur.fetchone()
            with pytest.raises(QueryError) as failed:
                await cur.execute("SELECT 1 / 0")
        kept = weakref.ref(failed.value)
        del failed
        async with db.cursor() as cur:
            await cur.execute("SELECT pg_backend_pid()")
            assert (await cur.fetchone())[0] != first
        gc.collect()
        assert kept() is None
    finally:
        await db.close()
