"""Stale pooled connections: a connection whose server went away without relay
noticing (a failover, a host crash) costs no request where sending its first
statement again is safe, and a PostgreSQL that is really down is still a 503.

A TCP proxy stands between relay and PostgreSQL. `forget` makes it act as a host
that took over the server's address after a failover: the connections relay pooled
are reset when next used, new ones reach the server. `black_hole` makes the pooled
connections stop answering without being closed, as a hung server's do. (A crashed
host acknowledges nothing, so relay's tcp_user_timeout fails a statement sent to it
sooner; that needs a firewall to show, and was measured outside the suite.)
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import psycopg2.extensions
import pytest

from relay.errors import DependencyUnavailableError
from relay.stores.database import Database, prepared
from relay.stores.database_failures import UnconfirmedCommitError
from tests.api_calls import bearer, client_with_token
from tests.history_calls import query

TIMEOUT = 2.0
POOL = 3


class Proxy:
    """Forwards TCP to PostgreSQL; can forget, black-hole or refuse connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "forward"  # what happens to connections made before the change
        self.refusing = False  # new connections reset at once
        self.connections = 0
        self._old: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._old:
            writer.transport.abort()

    def forget(self) -> None:
        """Connections made so far are reset by the next bytes relay sends on them."""
        self.mode = "forget"

    def black_hole(self) -> None:
        """Connections made so far swallow what relay sends and never answer."""
        self.mode = "black_hole"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refusing:
            _reset(client_w)
            return
        server_r, server_w = await asyncio.open_connection(*self.target)
        born = self.mode
        self._old.add(client_w)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.mode != born and self.mode == "forget":
                    _reset(client_w)
                    server_w.transport.abort()
                    return
                if self.mode != born:
                    continue  # black hole: swallowed
                server_w.write(data)

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if self.mode == born:
                    client_w.write(data)

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            server_w.transport.abort()
            client_w.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    parameters = psycopg2.extensions.parse_dsn(database_url)
    proxy = Proxy((parameters["host"], int(parameters["port"])))
    port = await proxy.start()
    yield proxy, psycopg2.extensions.make_dsn(database_url, host="127.0.0.1", port=port)
    await proxy.close()


@pytest.fixture
async def db(proxy: tuple[Proxy, str]) -> AsyncIterator[Database]:
    """A pool of POOL connections, every one of them used once already."""
    database = await Database.open(proxy[1], size=POOL, timeout=TIMEOUT)
    async with AsyncExitStack() as held:
        for _ in range(POOL):
            cur = await held.enter_async_context(database.cursor())
            await cur.execute("SELECT 1")
    assert database.pool_stats() == {"size": POOL, "free": POOL, "max": POOL}
    yield database
    await database.close()


async def count_clients(db: Database) -> int:
    async with db.cursor() as cur:
        await cur.execute("SELECT count(*) FROM clients")
        (count,) = await cur.fetchone()
    return int(count)


INSERT_CLIENT = "INSERT INTO clients (name, key_id, key_hash) VALUES ('stale', %s, 'x')"


async def stored_clients(database_url: str) -> list[str]:
    rows = await query(database_url, "SELECT key_id FROM clients WHERE name = 'stale'")
    return sorted(row["key_id"] for row in rows)


async def test_a_server_restart_costs_no_request(database_url, db):
    """Terminated server processes close their connections: the pool sees that."""
    await query(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    await asyncio.sleep(0.1)
    for _ in range(POOL):
        assert await count_clients(db) == 0


async def test_history_reads_after_a_failover_are_answered(proxy, make_client, make_settings):
    """What a client sees: before, each connection the failover left in the pool
    failed one request with a 503."""
    settings = make_settings(
        database_url=proxy[1], database_pool_size=POOL, database_timeout=TIMEOUT
    )
    http = await make_client(settings)
    _, token = await client_with_token(http)
    reads = [http.get("/v1/history", headers=bearer(token)) for _ in range(2 * POOL)]
    assert [r.status for r in await asyncio.gather(*reads)] == [200] * 2 * POOL
    proxy[0].forget()
    for _ in range(2 * POOL):
        assert (await http.get("/v1/history", headers=bearer(token))).status == 200


async def test_reads_on_connections_a_failover_left_behind_are_answered(proxy, db):
    proxy[0].forget()
    for _ in range(POOL):
        assert await count_clients(db) == 0


async def test_a_connection_made_before_a_failover_is_taken_for_stale_though_never_used(proxy):
    """The pool makes connections it does not hand out at once: its first, as it
    opens; or one made for a request that took another, released meanwhile."""
    database = await Database.open(proxy[1], size=POOL, timeout=TIMEOUT)
    try:
        assert database.pool_stats()["size"] == 1  # made, never used
        proxy[0].forget()
        assert await count_clients(database) == 0
    finally:
        await database.close()


async def test_a_transaction_on_a_forgotten_connection_runs_once(proxy, db, database_url):
    proxy[0].forget()
    async with db.transaction() as cur:
        await cur.execute(INSERT_CLIENT, ("in-transaction",))
    assert await stored_clients(database_url) == ["in-transaction"]


async def test_a_batch_that_opens_its_transaction_first_runs_once(proxy, db, database_url):
    proxy[0].forget()
    async with db.batch() as tx:
        await tx.execute("SELECT count(*) FROM clients")
        tx.defer(INSERT_CLIENT, ("in-batch",))
    assert await stored_clients(database_url) == ["in-batch"]


COUNT_OTHERS = prepared(
    "test_stale_count_others", "SELECT count(*) FROM clients WHERE name <> %s::text"
)


async def test_a_batch_opening_with_a_prepared_statement_runs_once_on_a_fresh_connection(
    proxy, db, database_url
):
    """Sent again on a fresh connection, the statement is prepared there first."""
    async with AsyncExitStack() as held:
        for _ in range(POOL):  # every pooled connection has it prepared
            tx = await held.enter_async_context(db.batch())
            await tx.execute(COUNT_OTHERS, ("stale",))
    proxy[0].forget()
    async with db.batch() as tx:
        await tx.execute(COUNT_OTHERS, ("stale",))
        assert await tx.fetchone() == (0,)
        tx.defer(INSERT_CLIENT, ("prepared",))
    assert await stored_clients(database_url) == ["prepared"]


async def test_a_one_trip_batch_is_not_sent_twice(proxy, db, database_url):
    """Its one round trip is the whole transaction, COMMIT included: lost after being
    sent, it may have committed; relay settles that (UnconfirmedCommitError), never by
    sending it again."""
    proxy[0].forget()
    with pytest.raises(UnconfirmedCommitError):
        async with db.batch() as tx:
            tx.defer(INSERT_CLIENT, ("one-trip",))
    assert await stored_clients(database_url) == []


async def test_a_write_outside_a_transaction_is_not_sent_twice(proxy, db, database_url):
    proxy[0].forget()
    with pytest.raises(DependencyUnavailableError):
        async with db.cursor() as cur:
            await cur.execute(INSERT_CLIENT, ("autocommit",))
    assert await stored_clients(database_url) == []
    # The pool's other connections, as stale, were dropped with it: the next write works.
    async with db.cursor() as cur:
        await cur.execute(INSERT_CLIENT, ("next",))
    assert await stored_clients(database_url) == ["next"]


async def test_a_connection_idle_past_the_recycle_time_is_not_used_again(proxy, database_url):
    """After a quiet spell, even a write (which is never sent twice) meets no stale
    connection: the pool replaced it rather than trust it."""
    db = await Database.open(proxy[1], size=1, timeout=TIMEOUT, recycle=0.2)
    try:
        async with db.cursor() as cur:
            await cur.execute("SELECT 1")
        proxy[0].forget()
        await asyncio.sleep(0.3)
        async with db.cursor() as cur:
            await cur.execute(INSERT_CLIENT, ("after-quiet",))
    finally:
        await db.close()
    assert await stored_clients(database_url) == ["after-quiet"]


async def test_a_server_that_is_down_is_still_a_503_after_one_more_try(proxy, db):
    proxy[0].forget()
    proxy[0].refusing = True
    made = proxy[0].connections
    with pytest.raises(DependencyUnavailableError):
        await count_clients(db)
    assert proxy[0].connections - made == 1  # one fresh connection tried, no more


async def test_a_server_that_stopped_answering_is_a_503_within_the_timeout(proxy, db):
    """A statement that got no answer within RELAY_DATABASE_TIMEOUT is not sent again:
    the time a request may wait for PostgreSQL is spent."""
    proxy[0].black_hole()
    started = asyncio.get_running_loop().time()
    with pytest.raises(DependencyUnavailableError):
        await count_clients(db)
    assert asyncio.get_running_loop().time() - started < TIMEOUT * 1.5


async def test_an_answer_whose_commit_meets_a_dead_connection_is_saved_once(
    proxy, make_client, make_settings, database_url
):
    """The group commit's one round trip (COMMIT included) is not sent twice as it
    stands; settled as not committed (the connection was dead), it is tried again on
    a fresh one. Before, its client was told history_unavailable after a failover."""
    settings = make_settings(
        database_url=proxy[1], database_pool_size=POOL, database_timeout=TIMEOUT
    )
    http = await make_client(settings)
    _, token = await client_with_token(http)
    body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "before"}]}
    warm = [http.post("/v1/chat/completions", json=body, headers=bearer(token)) for _ in range(4)]
    assert [r.status for r in await asyncio.gather(*warm)] == [200] * 4
    proxy[0].forget()
    body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "after the failover"}]}
    answer = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert answer.status == 200, await answer.text()
    rows = await query(database_url, "SELECT id FROM messages WHERE content = 'after the failover'")
    assert len(rows) == 1
    receipt = answer.headers["x-receipt-id"]
    assert len(await query(database_url, f"SELECT id FROM receipts WHERE id = '{receipt}'")) == 1
