"""What the PostgreSQL driver's failures mean to relay: a server that is down, too
slow, or that cancels a statement becomes `DependencyUnavailableError` (503) here,
once, instead of in every store. (Part of the driver boundary, with `database`.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import psycopg2
import psycopg2.extensions

from relay import sockets
from relay.errors import DependencyUnavailableError

if TYPE_CHECKING:
    from relay.stores.database import ServerProcess

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the server is not there", as opposed to a bad query.
_UNAVAILABLE = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)


# libpq's and the server's words for a connection no retry can make: a connection
# string libpq cannot read, or a password, database or role the server refuses.
_MISCONFIGURED = re.compile(
    r'invalid connection option|invalid \w+ value|missing "=" after|'
    r'password authentication failed|(database|role) ".*" does not exist|no pg_hba\.conf entry'
)


def misconfigured(error: BaseException) -> bool:
    """Whether `error` (raised here) is relay's database settings being wrong rather
    than PostgreSQL being down: starting again will not help until they change."""
    return isinstance(error, DependencyUnavailableError) and bool(
        _MISCONFIGURED.search(error.reason)
    )


def unavailable(exc: BaseException) -> DependencyUnavailableError:
    # The driver's first line tells a wrong password or database name from an
    # outage; connection failures name host, port, database and user, never values.
    lines = str(exc).strip().splitlines() if isinstance(exc, psycopg2.OperationalError) else []
    reason = lines[0] if lines else ""
    # A statement the server stopped (a search past its statement_timeout) is not
    # an outage, and its line must not read as one to whoever is paged by it.
    what = (
        "postgres cancelled a statement"
        if isinstance(exc, psycopg2.extensions.QueryCanceledError)
        else "postgres unavailable"
    )
    log.warning(what, extra={"error": type(exc).__name__, "reason": reason})
    return DependencyUnavailableError(
        "The database is unavailable; try again shortly.", reason=reason
    )


@contextmanager
def driver_errors() -> Iterator[None]:
    """Unavailability, and a statement the server cancelled, as DependencyUnavailableError."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise unavailable(exc) from exc
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the task itself is cancelled: its client left, or relay is stopping
        # aiopg raises a statement PostgreSQL cancelled (statement_timeout,
        # pg_cancel_backend(), a recovery conflict) as CancelledError, with psycopg2's
        # QueryCanceledError only as its context. Left alone it would pass for the
        # task's own cancellation: a dropped connection instead of a 503.
        context = exc.__context__
        statement = context if isinstance(context, psycopg2.extensions.QueryCanceledError) else exc
        raise unavailable(statement) from exc


def out_of_reach(error: DependencyUnavailableError) -> bool:
    """Whether `error` (raised here) means the server cannot be reached or did not
    answer in time, rather than that it refused one statement: a deadlock, a
    serialization failure, a statement it cancelled."""
    refused = (psycopg2.extensions.TransactionRollbackError, asyncio.CancelledError)
    return not isinstance(error.__cause__, refused)


def statement_cancelled(error: BaseException) -> bool:
    """Whether the server cancelled the statement behind `error` (statement_timeout, an
    operator's pg_cancel_backend): its QueryCanceledError is among the causes (aiopg
    raises CancelledError with it as the context: see driver_errors)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, psycopg2.extensions.QueryCanceledError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connection_died(error: psycopg2.Error, closed: int) -> bool:
    """Whether `error` (its connection now `closed`, as psycopg2 tells) is the connection
    having died rather than the server refusing a statement: a server's own error
    carries its SQLSTATE, even one that ends the session (pg_terminate_backend)."""
    return bool(closed) and error.pgcode is None


class UnconfirmedCommitError(DependencyUnavailableError):
    """A transaction's COMMIT was sent, then the connection was lost or relay stopped
    waiting (`out_of_reach`): it may have committed all the same (a COMMIT waiting for
    its WAL flush, or for a synchronous standby, completes without its client).
    `backend` is the server process that ran it (see relay.stores.lost_commits);
    `timed_out`, whether relay stopped waiting (rather than the connection dying)."""

    def __init__(self, lost: DependencyUnavailableError, backend: ServerProcess) -> None:
        super().__init__(str(lost), reason=lost.reason)
        self.backend = backend
        self.timed_out = isinstance(lost.__cause__, TimeoutError)


class _DriverNoiseFilter(logging.Filter):
    """What aiopg reports to the event loop's exception handler, as errors with
    tracebacks, that relay says itself or that says nothing. Dropped from asyncio's log:

    - a statement the server cancelled: relay logs it once, as the warning
      `unavailable` writes;
    - a connection that failed as it was being made (the server down): aiopg leaves it
      unclosed, so once collected it warns "Unclosed connection" and, closing it, fails
      a waiter nobody awaits ("Future exception was never retrieved ... Connection
      closed"): three error lines per request while the server is down, besides the
      warning relay writes for the request itself.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, psycopg2.extensions.QueryCanceledError):
            return False
        if isinstance(error, psycopg2.OperationalError) and str(error) == _CLOSED_WAITER:
            return False
        return not record.getMessage().startswith(_UNCLOSED_AIOPG)


_CLOSED_WAITER = "Connection closed"  # what aiopg fails its waiter with as it closes
_UNCLOSED_AIOPG = "Unclosed connection\nconnection: <aiopg.connection::"


async def registered(
    connecting: Callable[[], Awaitable[T]], *, only_waited: Callable[[], bool] = lambda: False
) -> T:
    """A new connection, or one from the pool, however uvloop fares (see
    relay.sockets.registered); the server taken for unreachable when it keeps failing.
    A connection that could not be made leaves its closed poll handle behind: cleared at
    once, before any other connection (a provider's, the dstack agent's) is given its
    socket number. A timeout that `only_waited` says made no connection (a wait for a
    pool's free one) left nothing to clear: the clearing (a millisecond, the loop held)
    is not paid by every request a busy pool turns away."""
    try:
        return await sockets.registered(connecting)
    except RuntimeError as exc:
        raise unavailable(exc) from exc
    except TimeoutError:
        if not only_waited():
            sockets.purge_closed_handles(asyncio.get_running_loop())
        raise
    except (psycopg2.Error, OSError):
        sockets.purge_closed_handles(asyncio.get_running_loop())
        raise


def quiet_driver_noise() -> None:
    """Install the filter that keeps asyncio from logging what aiopg reports to it (see
    _DriverNoiseFilter), and drop aiopg's own warning of a connection it left unclosed
    (aiopg asks for every one of its ResourceWarnings to be shown). Once, however often
    called."""
    logging.getLogger("asyncio").addFilter(_DRIVER_NOISE_FILTER)
    warnings.filterwarnings("ignore", "Unclosed connection", ResourceWarning, r"aiopg\.connection")


_DRIVER_NOISE_FILTER = _DriverNoiseFilter()
