"""While PostgreSQL is down, each failed request is one warning of relay's, not a burst
of aiopg's errors and raw warnings; and any library's warning is a line of relay's log."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys

import orjson
import pytest

from relay.devservers import PostgresServer
from relay.errors import DependencyUnavailableError
from relay.stores.database import Database
from relay.stores.database_admin import create_database

STALE = "postgres connection was stale; statement sent again on a new one"


async def test_connections_failing_while_postgres_is_down_log_only_relays_warning(
    postgres_tmp_path, caplog, recwarn
):
    # What earlier tests in this process left to the collector is not this test's to
    # judge: collected later, before relay's filters are installed, it would be recorded.
    gc.collect()
    recwarn.clear()
    caplog.clear()
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        await create_database(pg.url, "relay")
        db = await Database.open(pg.url_for("relay"), size=2, timeout=5)
        caplog.set_level(logging.WARNING)
        try:
            pg.stop()
            for _ in range(3):
                with pytest.raises(DependencyUnavailableError):
                    async with db.cursor() as cur:
                        await cur.execute("SELECT 1")
            gc.collect()  # aiopg's failed connections are collected, and complain then
            await asyncio.sleep(0.05)
        finally:
            await db.close()
    logged = [
        (record.name, record.getMessage())
        for record in caplog.records
        if record.name != "relay.devservers.postgres_server"
    ]
    assert not [line for line in logged if line[0] == "asyncio"], logged
    assert {line for line in logged} == {
        # The pool's first connection, made before the server stopped, is taken for
        # stale (a failover's), and its statement sent once more on a new one, which fails.
        ("relay.stores.database_connection", STALE),
        ("relay.stores.database_failures", "postgres unavailable"),
    }
    assert not [str(w.message) for w in recwarn if issubclass(w.category, ResourceWarning)]


def test_a_library_warning_is_a_json_line_of_relays_log():
    program = (
        "import warnings; from relay.logs import setup_logging; setup_logging('INFO');"
        " warnings.warn('a library says so', UserWarning); import logging; logging.shutdown()"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    [line] = done.stderr.splitlines()
    record = orjson.loads(line)
    assert (record["level"], record["logger"]) == ("warning", "py.warnings")
    assert "a library says so" in record["msg"]
