"""Statements PostgreSQL parses and plans once per connection, then only runs. (Part of
the driver boundary, with `database`.)

Every group commit sends the same few statements. Parsed and planned afresh each
time, they cost a one-answer batch a third of its time inside PostgreSQL (0.4 ms of
1.2, measured with the server's fsync off). A statement made with `prepared` is sent
by a `Batch` as EXECUTE with only its values, PREPAREd in the same round trip the
first time a connection sends it: the locks its PREPARE takes are those the statement
itself takes there and then, so a connection is never held up by a table it does not
use (as it would be, preparing everything as it connects, behind a migration's lock).

PREPARE is not rolled back with the transaction it was sent in. A batch that failed
leaves it unknown which of its PREPAREs the server ran: its connection then starts
its next PREPARE with DEALLOCATE ALL, and prepares each statement afresh.
(Behind a transaction-pooling PgBouncer a connection is not relay's own; relay
needs its own anyway: see the README's durability section.)
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

# A placeholder with its type: `%s::uuid[]`. PREPARE declares each parameter's type
# from it, and EXECUTE casts each value to it (a list arrives as text[], which
# PostgreSQL does not turn into uuid[] on its own).
_TYPED_PLACEHOLDER = re.compile(r"%s::(\w+(?:\[\])?)")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement with typed placeholders, prepared on a connection as it is first sent."""

    name: str  # the server's name for it, on every connection
    prepare: str
    execute: str  # EXECUTE with psycopg2 placeholders for its values


_NAMES: set[str] = set()


def prepared(name: str, sql: str) -> Prepared:
    """`sql`, whose every `%s` names its type (`%s::bigint[]`), as a statement prepared
    once per connection; `name` is unique in the process."""
    types = _TYPED_PLACEHOLDER.findall(sql)
    if sql.count("%s") != len(types) or "%(" in sql:
        raise ValueError(f"statement {name}: every %s needs its type, as in %s::bigint")
    server_name = f"relay_{name}"
    if server_name in _NAMES:
        raise ValueError(f"statement {name} is made twice")
    _NAMES.add(server_name)
    numbers = iter(range(1, len(types) + 1))
    body = _TYPED_PLACEHOLDER.sub(lambda typed: f"${next(numbers)}::{typed[1]}", sql)
    body = body.replace("%%", "%")  # the PREPARE goes as written, never through mogrify
    if not types:
        return Prepared(server_name, f"PREPARE {server_name} AS {body}", f"EXECUTE {server_name}")
    values = ", ".join(f"%s::{kind}" for kind in types)
    return Prepared(
        server_name,
        f"PREPARE {server_name}({', '.join(types)}) AS {body}",
        f"EXECUTE {server_name}({values})",
    )


@dataclass(slots=True)
class _Statements:
    """What one connection's server session has prepared."""

    names: set[str] = field(default_factory=set)
    # A batch that sent PREPAREs failed: the session may hold any of them, or none.
    unsure: bool = False


_SESSIONS: weakref.WeakKeyDictionary[Any, _Statements] = weakref.WeakKeyDictionary()


def sent_as(conn: Any, statement: str | Prepared, out: list[str]) -> str:
    """The text that runs `statement` on `conn` (its values still to bind), after
    appending to `out` what must run before it there: its PREPARE, the first time."""
    if isinstance(statement, str):
        return statement
    session = _SESSIONS.get(conn)
    if session is None:
        session = _SESSIONS[conn] = _Statements()
    if statement.name not in session.names:
        if session.unsure:
            out.append("DEALLOCATE ALL")
            session.unsure = False
        out.append(statement.prepare)
        session.names.add(statement.name)
    return statement.execute


def forget_prepared(conn: Any) -> None:
    """A batch that may have sent PREPAREs on `conn` failed: which ran is unknown."""
    session = _SESSIONS.get(conn)
    if session is not None and session.names:
        session.names.clear()
        session.unsure = True
