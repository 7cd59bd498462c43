"""Creating, dropping and pointing at databases (for the tests, `relay dev` and the
benchmark) and checking a connection string (for the settings): never on the
request path. (Part of the driver boundary, with `database`.)"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from relay.stores.database import Cursor, connect, quote_identifier


async def create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE (used by tests, `relay dev` and the benchmark)."""
    conn = await connect(admin_dsn, timeout=30)
    try:
        async with conn.cursor() as cur:
            sql = f"CREATE DATABASE {quote_identifier(name)}"
            if template:
                sql += f" TEMPLATE {quote_identifier(template)}"
                if conn.server_version >= 150000:
                    # A small migrated template, copied for each test: file by file
                    # (a checkpoint, fast with the test server's fsync off) creating
                    # and dropping take half the time of WAL_LOG, 15's default.
                    sql += " STRATEGY FILE_COPY"
            await cur.execute(sql)
    finally:
        await conn.close()


async def ensure_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE unless it exists (`relay dev` keeps its database between runs)."""
    conn = await connect(admin_dsn, timeout=10)
    try:
        async with conn.cursor() as cur:
            exists = await _database_exists(cur, name)
    finally:
        await conn.close()
    if not exists:
        await create_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await connect(admin_dsn, timeout=30)
    try:
        async with conn.cursor() as cur:
            # Refuse new connections first: a client that reconnects between FORCE's
            # termination of sessions and the drop itself would make the drop fail.
            if await _database_exists(cur, name):
                await cur.execute(
                    f"ALTER DATABASE {quote_identifier(name)} ALLOW_CONNECTIONS false"
                )
            await cur.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def _database_exists(cur: Cursor, name: str) -> bool:
    await cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with `dsn`, a URL or a key=value string, in words that quote none
    of it (libpq's own complaint would, password included); None if nothing is.

    libpq reads a port that is no number without complaint, and fails only when it
    connects: a typo that would otherwise pass for a server that is down."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "PostgreSQL cannot read it as a URL or connection string"
    for port in params.get("port", "").split(","):
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            return "its port is not a number from 1 to 65535"
    return None


def with_database(dsn: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    params = psycopg2.extensions.parse_dsn(dsn)
    params["dbname"] = name
    return psycopg2.extensions.make_dsn(**params)
