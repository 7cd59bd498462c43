"""A transaction whose COMMIT relay lost (past its timeout, or with its connection):
settled by what the server holds once the server process that ran it is gone, and,
stored, once it is as durable as any commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from relay.errors import DependencyUnavailableError
from relay.stores.database import Database, QueryError, ServerProcess
from relay.stores.database_failures import UnconfirmedCommitError

log = logging.getLogger(__name__)

# How often `stop_backend` looks whether a terminated process has gone.
_GONE_POLL_SECONDS = 0.01


async def settle(
    db: Database, backend: ServerProcess, stored: Callable[[], Awaitable[bool | None]]
) -> tuple[bool | None, str]:
    """Whether the transaction `backend` ran committed, durably: True; False if it did
    not (nothing of it was applied); None if that cannot be told, with why. `stored`
    looks for its rows (None: none of them says). Raises DependencyUnavailableError
    when the server cannot be asked."""
    if not await stop_backend(db, backend):
        return None, "its server process outlived the wait"
    found = await stored()
    if found is None:
        return None, "no row says"
    if not found:
        return False, ""
    # Stored, it may be so on this server alone (see confirm_durable).
    if not await confirm_durable(db):
        return None, "its commit was not confirmed durable in time"
    return True, ""


async def stop_backend(db: Database, process: ServerProcess) -> bool:
    """Terminate the server process (one whose connection relay lost) and wait, for at
    most the database's timeout, until it is gone: a transaction it ran has then
    committed or rolled back for good, and other sessions see which. True once it is
    gone.

    The process is named by pid and start time, on whatever server relay reaches now:
    after a failover the old primary's is simply not found (what the new one holds is
    then the truth), and no other process is ever terminated; and only one of this
    database and role.
    """
    deadline = asyncio.get_running_loop().time() + db.timeout
    this_one = "pid = %s AND backend_start = %s::timestamptz"
    async with db.cursor() as cur:
        await cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE {this_one} AND datname = current_database() AND usename = current_user",
            process,
        )
        while True:
            await cur.execute(f"SELECT FROM pg_stat_activity WHERE {this_one}", process)
            if await cur.fetchone() is None:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(_GONE_POLL_SECONDS)


async def confirm_durable(db: Database) -> bool:
    """Whether every transaction committed so far is as durable as the server promises,
    one whose COMMIT relay lost included: terminating its server process
    (`stop_backend`) ends a wait for a synchronous standby, and leaves it committed on
    this server alone, which a failover loses.

    A transaction of relay's own that writes to the log (a logical message, read by
    nobody) commits as every commit does: its wait for the standbys
    (synchronous_standby_names) covers all that committed before it. False if that does
    not end within the timeout (its server process is then ended too, not left waiting,
    a connection slot held, for as long as the standbys are away), or cannot be asked."""
    try:
        async with db.batch() as tx:
            tx.defer("SELECT pg_logical_emit_message(true, 'relay', 'durable?')")
    except UnconfirmedCommitError as unconfirmed:
        with contextlib.suppress(DependencyUnavailableError):
            await stop_backend(db, unconfirmed.backend)
        return False
    except DependencyUnavailableError:
        return False
    except QueryError as exc:  # the function refused (a managed server, say)
        log.warning("commit durability cannot be confirmed", extra={"error": type(exc).__name__})
        return False
    return True
