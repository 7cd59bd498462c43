"""Applies the numbered SQL files in `sql/`, each once, in order, under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

from relay.config_values import ConfigError
from relay.errors import DependencyUnavailableError
from relay.stores.database import Connection, Cursor, QueryError, connect, fetch_all
from relay.stores.database_failures import misconfigured

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every relay instance.
LOCK_ID = 0x72656C6179  # "relay"
# The connection's timeout bounds getting connected; statements get their own:
# another instance may be migrating (wait for it), and one migration may build
# an index over a large table.
_LOCK_WAIT_SECONDS = 600.0
_STATEMENT_SECONDS = 3600.0
_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")
# Earlier texts of released migrations that databases may have applied: the same
# statements, a comment since corrected. (Each is a mistake: an applied file is never
# edited, tests/test_migrations.py pins every released one.)
_EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    # 004's comment said "about a third" of the WAL for 38 minutes after its release.
    4: frozenset({"5860e1d7b74178a00abd73588ebd69c8f43d7360921dc6f06ec8ad1f3366e515"}),
}


class MigrationError(Exception):
    """Migrations relay cannot apply. `must_mend`: not until an operator mends the
    migration files or the database (starting again cannot help), where a migration
    that failed or a lock held too long may pass on a later try."""

    def __init__(self, message: str, *, must_mend: bool = False) -> None:
        super().__init__(message)
        self.must_mend = must_mend


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def accepted_checksums(self) -> frozenset[str]:
        """This text's checksum, and those of its earlier texts a database may have had."""
        return _EARLIER_CHECKSUMS.get(self.version, frozenset()) | {self.checksum}


def migrations_dir() -> Path:
    """`sql/` beside the package in a checkout, else where setup.cfg installs it."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "sql",
        Path(sys.prefix) / "share" / "relay" / "sql",
    ):
        if candidate.is_dir():
            return candidate
    raise MigrationError("cannot find relay's sql/ migrations directory", must_mend=True)


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named NNN_verb_noun.sql", must_mend=True
            )
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number", must_mend=True)
    return found


async def migrate(dsn: str, directory: Path | None = None, timeout: float = 30) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to run concurrently."""
    migrations = load_migrations(directory)
    conn = await _connect(dsn, timeout)
    try:
        async with conn.cursor(timeout=_STATEMENT_SECONDS) as cur:
            await _lock(cur)
            try:
                return await _apply(cur, migrations)
            finally:
                # A statement that timed out closed the connection, which ended the lock too.
                if not conn.closed:
                    await cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    finally:
        await conn.close()


async def _lock(cur: Cursor) -> None:
    """Take the migration lock, waiting for another instance's migrations if need be:
    said in the log, as the wait may be long and nothing else happens meanwhile."""
    await cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_ID,))
    row = await cur.fetchone()
    if row and row[0]:
        return
    log.info("waiting for another instance's migrations (the migration lock is held)")
    started = time.monotonic()
    try:
        await cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,), timeout=_LOCK_WAIT_SECONDS)
    except TimeoutError:
        raise MigrationError(
            f"another relay has held the migration lock for {_LOCK_WAIT_SECONDS:.0f} s;"
            " is a migration stuck?"
        ) from None
    log.info("migration lock taken", extra={"waited_s": round(time.monotonic() - started, 3)})


async def pending(dsn: str, directory: Path | None = None, timeout: float = 30) -> list[str]:
    """The names of the migrations this relay needs that the database has not had."""
    migrations = load_migrations(directory)
    conn = await _connect(dsn, timeout)
    try:
        async with conn.cursor(timeout=_STATEMENT_SECONDS) as cur:
            rows = []
            if await _has_ledger(cur):
                rows = await fetch_all(cur, "SELECT version FROM schema_migrations")
    finally:
        await conn.close()
    applied = {row["version"] for row in rows}
    return [migration.name for migration in migrations if migration.version not in applied]


async def require_current(dsn: str, timeout: float = 30) -> None:
    """Raise MigrationError naming the migrations the database lacks, when relay may
    not apply them itself (RELAY_RUN_MIGRATIONS off): serving on a schema behind the
    code would fail request after request."""
    if missing := await pending(dsn, timeout=timeout):
        raise MigrationError(
            f"the database lacks {len(missing)} migration(s) this relay needs"
            f" ({', '.join(missing)}); run `relay migrate` first (RELAY_RUN_MIGRATIONS is off)"
        )


async def prepare_schema(dsn: str, *, apply: bool, timeout: float = 30) -> list[str]:
    """Bring the schema up to date (`apply`, RELAY_RUN_MIGRATIONS) and name what was
    applied, or require it current: during a rolling upgrade, with migrations off, a
    new version must not change the schema under the old instances."""
    if apply:
        return await migrate(dsn, timeout=timeout)
    await require_current(dsn, timeout=timeout)
    return []


async def _connect(dsn: str, timeout: float) -> Connection:
    """The first connection every command makes (`relay serve`, `migrate`, `clients`),
    its failure said so that it tells a setting to mend (ConfigError: a database or role
    that does not exist, a wrong password) from an outage, and a server that never
    answered from one that refused."""
    try:
        return await connect(dsn, timeout=timeout)
    except DependencyUnavailableError as exc:
        if misconfigured(exc):
            # libpq's and the server's words: they name a database or role, never a password.
            raise ConfigError(f"RELAY_DATABASE_URL: {exc.reason}") from None
        if isinstance(exc.__cause__, TimeoutError):
            reason = f"timed out after {timeout:g} s connecting to {_server(dsn)}"
            raise DependencyUnavailableError(str(exc), reason=reason) from exc.__cause__
        raise


def _server(dsn: str) -> str:
    """host:port of `dsn` as libpq reads it (its environment defaults included), for a
    message: never the password."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        params = {}
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return f"{host or 'the local socket'}:{port}"


async def _has_ledger(cur: Cursor) -> bool:
    await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])


async def _apply(cur: Cursor, migrations: list[Migration]) -> list[str]:
    try:
        await cur.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    except QueryError as exc:  # a role without CREATE on the schema, say
        raise MigrationError(
            f"cannot keep the migrations' ledger: {_reason(exc)}", must_mend=True
        ) from None
    rows = await fetch_all(cur, "SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    known = {migration.version for migration in migrations}
    for version in sorted(set(applied) - known):
        log.warning("database has a migration this relay does not know", extra={"version": version})
    done = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded:
            if recorded["checksum"] not in migration.accepted_checksums:
                raise MigrationError(
                    f"{migration.name} was edited after it was applied; "
                    "add a new migration instead of changing an applied one",
                    must_mend=True,
                )
            continue
        try:
            async with cur.begin():
                await cur.execute(migration.sql)
                await cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
        except (TimeoutError, QueryError) as exc:
            raise _failed(migration, exc) from None
        log.info("migration applied", extra={"migration": migration.name})
        done.append(migration.name)
    return done


def _failed(migration: Migration, exc: BaseException) -> MigrationError:
    # A timeout closes the connection, so the ROLLBACK after it fails in turn.
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return MigrationError(
            f"{migration.name} ran longer than {_STATEMENT_SECONDS:.0f} s and was stopped"
        )
    return MigrationError(f"{migration.name} failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    # PostgreSQL's own words about relay's SQL: no request data is in them.
    return (getattr(exc, "pgerror", None) or str(exc)).strip().splitlines()[0]
