"""PostgreSQL's own log never holds what relay's statements carry: psycopg2 writes every
value into a statement's text, and the server logs the text of a failed statement."""

from __future__ import annotations

import logging
import uuid

import psycopg2
import psycopg2.errors
import pytest

import relay.stores.database_connection as database_connection
from relay.devservers import PostgresServer
from relay.stores.database import Database, connect
from relay.stores.database_admin import create_database
from relay.stores.database_connection import QUIET_LOGGING
from relay.stores.migrations import migrate

CANARY = "CANARY-PROMPT-" + uuid.uuid4().hex

# A message row whose conversation does not exist: the foreign key refuses it.
ORPHAN_MESSAGE = (
    "INSERT INTO messages (conversation_id, client_id, seq, role, content, status)"
    " VALUES (%s, %s, 1, 'user', %s, 'complete')"
)


@pytest.fixture(autouse=True)
def tell_again(monkeypatch):
    monkeypatch.setattr(database_connection, "_loud_logging_told", False)


async def session_settings(db: Database) -> dict[str, str]:
    async with db.cursor() as cur:
        values = {}
        for name in QUIET_LOGGING:
            await cur.execute(f"SELECT current_setting('{name}')")
            values[name] = (await cur.fetchone())[0]
    return values


async def fail_with_canary(db: Database) -> None:
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        async with db.batch() as batch:
            batch.defer(ORPHAN_MESSAGE, (str(uuid.uuid4()), str(uuid.uuid4()), CANARY))


async def test_a_failed_statement_leaves_its_content_out_of_the_server_log(postgres_tmp_path):
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        await create_database(pg.url, "relay")
        url = pg.url_for("relay")
        await migrate(url)
        # An operator samples transactions into the log: every statement of one sampled.
        await superuser(url, "ALTER DATABASE relay SET log_transaction_sample_rate = 1")
        # The server as installed logs a failed statement's text, content and all.
        conn = await connect(url, timeout=10)
        try:
            async with conn.cursor() as cur:
                with pytest.raises(psycopg2.Error):
                    await cur.execute(ORPHAN_MESSAGE, (str(uuid.uuid4()), str(uuid.uuid4()), "x"))
        finally:
            await conn.close()
        db = await Database.open(url, size=2, timeout=10)
        try:
            await fail_with_canary(db)
            async with db.cursor() as cur:
                await cur.execute("SELECT %s", (CANARY,))
        finally:
            await db.close()
        pg.stop()
        server_log = pg.log_path.read_text(errors="replace")
    assert "STATEMENT:  INSERT INTO messages" in server_log  # the control above
    assert server_log.count("violates foreign key constraint") == 2
    assert CANARY not in server_log


async def test_relay_sessions_log_no_statement_text(database_url):
    db = await Database.open(database_url, size=2, timeout=10)
    try:
        assert await session_settings(db) == QUIET_LOGGING
    finally:
        await db.close()


@pytest.fixture
async def plain_role(postgres_url, database_url):
    """A role that owns nothing special: no superuser, no grants on parameters."""
    role, password = f"relay_plain_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    conn = await connect(postgres_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
        dsn = psycopg2.extensions.parse_dsn(database_url)
        yield role, psycopg2.extensions.make_dsn(**{**dsn, "user": role, "password": password})
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP OWNED BY {role}")
            await cur.execute(f"DROP ROLE {role}")
        await conn.close()


async def superuser(postgres_url: str, sql: str) -> None:
    conn = await connect(postgres_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        await conn.close()


async def test_a_role_that_may_not_quiet_the_log_is_told_once_how(plain_role, caplog):
    role, url = plain_role
    caplog.set_level(logging.WARNING, logger="relay.stores.database_connection")
    db = await Database.open(url, size=3, timeout=10)
    try:
        defaults = await session_settings(db)
        async with db.cursor(), db.cursor():  # more connections, no more warnings
            pass
    finally:
        await db.close()
    assert defaults["log_min_error_statement"] == "error"
    [told] = [record for record in caplog.records if "may write" in record.getMessage()]
    assert f"ALTER ROLE {role} SET log_min_error_statement = panic" in told.getMessage()
    assert "GRANT SET ON PARAMETER log_min_error_statement" in told.getMessage()


@pytest.mark.parametrize(
    "fix",
    [
        "GRANT SET ON PARAMETER log_min_error_statement, log_min_duration_statement,"
        " log_statement, log_min_duration_sample, log_transaction_sample_rate TO {role}",
        "ALTER ROLE {role} SET log_min_error_statement = panic;"
        " ALTER ROLE {role} SET log_min_duration_statement = -1;"
        " ALTER ROLE {role} SET log_statement = none",
    ],
)
async def test_a_role_granted_the_settings_or_given_them_logs_no_text(
    plain_role, postgres_url, caplog, fix
):
    role, url = plain_role
    await superuser(postgres_url, fix.format(role=role))
    caplog.set_level(logging.WARNING, logger="relay.stores.database_connection")
    db = await Database.open(url, size=2, timeout=10)
    try:
        assert await session_settings(db) == QUIET_LOGGING
    finally:
        await db.close()
    assert not [record for record in caplog.records if "may write" in record.getMessage()]
