"""SQL for the `clients` aggregate."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.errors import DependencyUnavailableError, WriteOutcomeUnknownError
from relay.stores.database import Database, UniqueViolation, fetch_one
from relay.stores.database_batch import as_mappings
from relay.stores.database_failures import UnconfirmedCommitError
from relay.stores.lost_commits import settle

_COLUMNS = (
    "id, name, key_id, key_hash, key_version, scopes, status, limits, store_history,"
    " metadata, created_at, updated_at"
)
_JSON_COLUMNS = frozenset({"limits", "metadata"})
UPDATABLE = frozenset({"name", "scopes", "status", "limits", "store_history", "metadata"})


# Held by a transaction that creates a client (exclusively) and by one that reads a page
# of the listing (shared): see ClientStore.list_page.
_LISTING_LOCK = 0x72656C6179636C  # "relaycl"


class KeyIdTaken(Exception):
    """The random key id collided with an existing one (astronomically rare; retry)."""


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    key_id: str
    key_hash: str = field(repr=False)
    key_version: int
    scopes: tuple[str, ...]
    status: str
    limits: dict[str, int]
    store_history: bool
    metadata: dict[str, Any]
    created_at: datetime.datetime
    updated_at: datetime.datetime

    @property
    def active(self) -> bool:
        return self.status == "active"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Client:
        return cls(**{**row, "id": str(row["id"]), "scopes": tuple(row["scopes"])})


def _db_value(column: str, value: Any) -> Any:
    return orjson.dumps(value).decode() if column in _JSON_COLUMNS else value


def canonical_client_id(text: str) -> str | None:
    """A client id in the one form relay stores and caches it (lower case, dashed),
    or None if `text` is no uuid. PostgreSQL reads fewer spellings than Python's uuid
    (not urn:uuid:…, say), so only this form reaches SQL."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


class ClientStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, name: str, key_id: str, key_hash: str, **values: Any) -> Client:
        columns = {"name": name, "key_id": key_id, "key_hash": key_hash}
        columns.update({key: _db_value(key, value) for key, value in values.items()})
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))
        # Its listing position is read once this transaction holds the listing lock, so
        # no page read before it commits can hold a client created after it.
        client = await self._keyed_write(
            "WITH held AS (SELECT clock_timestamp() AS at)"
            f" INSERT INTO clients ({names}, created_at, updated_at)"
            f" VALUES ({marks}, (SELECT at FROM held), (SELECT at FROM held))"
            f" RETURNING {_COLUMNS}",
            tuple(columns.values()),
            key_id,
            lock=("SELECT pg_advisory_xact_lock(%s)", (_LISTING_LOCK,)),
        )
        assert client is not None
        return client

    async def get(self, client_id: str) -> Client | None:
        checked = canonical_client_id(client_id)
        if checked is None:
            return None
        async with self.db.cursor() as cur:
            row = await fetch_one(cur, f"SELECT {_COLUMNS} FROM clients WHERE id = %s", (checked,))
        return Client.from_row(row) if row else None

    async def get_by_key_id(self, key_id: str) -> Client | None:
        async with self.db.cursor() as cur:
            row = await fetch_one(
                cur, f"SELECT {_COLUMNS} FROM clients WHERE key_id = %s", (key_id,)
            )
        return Client.from_row(row) if row else None

    async def list_page(
        self, *, limit: int, after: tuple[datetime.datetime, str] | None = None
    ) -> tuple[list[Client], bool]:
        """Clients oldest first; `after` is (created_at, id) of the last client of the
        previous page, which need not exist any more.

        A page is read once no client is being created: a creation that began before it
        (its created_at earlier) but committed after it would sort before the page's
        end, where a listing that follows the page's cursor never looks."""
        where = ""
        args: list[Any] = [limit + 1]
        if after is not None:
            where = "WHERE (created_at, id) > (%s, %s)"
            args[:0] = after
        async with self.db.batch() as tx:
            tx.defer("SELECT pg_advisory_xact_lock_shared(%s)", (_LISTING_LOCK,))
            await tx.execute(
                f"SELECT {_COLUMNS} FROM clients {where} ORDER BY created_at, id LIMIT %s",
                tuple(args),
            )
            rows = as_mappings(tx.cur, await tx.fetchall())
        return [Client.from_row(row) for row in rows[:limit]], len(rows) > limit

    async def update(self, client_id: str, changes: dict[str, Any]) -> Client | None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        checked = canonical_client_id(client_id)
        if checked is None:
            return None
        # `limits` is merged (a null drops an override); every other column is replaced.
        sets = ", ".join(
            "limits = jsonb_strip_nulls(limits || %s::jsonb)"
            if column == "limits"
            else f"{column} = %s"
            for column in changes
        )
        values = [_db_value(column, value) for column, value in changes.items()]
        async with self.db.cursor() as cur:
            row = await fetch_one(
                cur,
                f"UPDATE clients SET {sets}, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                (*values, checked),
            )
        return Client.from_row(row) if row else None

    async def replace_key(self, client_id: str, *, key_id: str, key_hash: str) -> Client | None:
        """Store a new key; the version bump revokes every token of the old one."""
        checked = canonical_client_id(client_id)
        if checked is None:
            return None
        return await self._keyed_write(
            "UPDATE clients SET key_id = %s, key_hash = %s, key_version = key_version + 1,"
            f" updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
            (key_id, key_hash, checked),
            key_id,
        )

    async def _keyed_write(
        self,
        sql: str,
        params: tuple[Any, ...],
        key_id: str,
        *,
        lock: tuple[str, tuple[Any, ...]] | None = None,
    ) -> Client | None:
        """Run `sql`, a write storing the new key `key_id`, and return the row it
        returns (None: it matched none). Its key is shown only in this answer, so the
        write must not happen behind an error that says "try again":

        - its COMMIT goes alone, after the statement answered: one relay gave up on
          before that (the server paused, a lock held) rolls back when its connection
          closes, rather than committing later on its own, as a lone statement would;
        - one whose COMMIT relay lost is settled, once the server process that ran it
          is gone, by whether `key_id` is stored, and durably so
          (WriteOutcomeUnknownError if that cannot be told).
        """
        try:
            async with self.db.batch() as tx:
                if lock is not None:
                    tx.defer(*lock)  # sent with the write, before it
                try:
                    await tx.execute(sql, params)
                except UniqueViolation as exc:
                    raise KeyIdTaken from exc
                row = await tx.fetch_mapping()
        except UnconfirmedCommitError as lost:
            return await self._settle(lost, key_id)
        return Client.from_row(row) if row else None

    async def _settle(self, lost: UnconfirmedCommitError, key_id: str) -> Client:
        """The client the lost write stored `key_id` in, if it committed; else the loss,
        now known to have changed nothing (so it may be tried again)."""
        stored: Client | None = None

        async def look() -> bool:
            nonlocal stored
            stored = await self.get_by_key_id(key_id)
            return stored is not None

        try:
            committed, _ = await settle(self.db, lost.backend, look)
        except DependencyUnavailableError:
            committed = None
        if committed is None:
            raise WriteOutcomeUnknownError(
                lost, f"look for key_id {key_id} among the clients before trying again."
            )
        if stored is None or not committed:
            raise DependencyUnavailableError(str(lost), reason=lost.reason) from lost
        return stored

    async def rehash_key(
        self, client_id: str, *, key_id: str, old_hash: str, new_hash: str
    ) -> bool:
        """Store the same key's hash made anew (at another cost), unless the key or its
        hash changed since `old_hash` was read; its tokens stay good."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "UPDATE clients SET key_hash = %s WHERE id = %s AND key_id = %s AND key_hash = %s",
                (new_hash, client_id, key_id, old_hash),
            )
            return bool(cur.rowcount)

    async def missing(self, client_ids: Iterable[str]) -> set[str]:
        """Those of `client_ids` (as stored) that are no longer there: deleted since."""
        wanted = sorted(set(client_ids))
        if not wanted:
            return set()
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT w.id FROM unnest(%s::uuid[]) AS w(id)"
                " WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.id = w.id)",
                (wanted,),
            )
            rows = await cur.fetchall()
        return {str(row[0]) for row in rows}

    async def delete(self, client_id: str) -> bool:
        checked = canonical_client_id(client_id)
        if checked is None:
            return False
        async with self.db.cursor() as cur:
            await cur.execute("DELETE FROM clients WHERE id = %s", (checked,))
            return bool(cur.rowcount)
