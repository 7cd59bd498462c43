"""SQL for reading and erasing conversations; every query is scoped by client_id."""

from __future__ import annotations

import datetime
from typing import Any

from relay.stores.conversation_context import read_context
from relay.stores.database import Database, fetch_all, fetch_one
from relay.stores.message_reads import fetch_within_budget, messages_within_budget

_COLUMNS = "id, title, created_at, updated_at"
# A conversation read whole is bounded; GET /v1/history pages through longer ones.
MAX_MESSAGES = 1000

# Expired tombstones purged by each one left: more than are ever added, so they
# cannot pile up, and few enough that a DELETE stays a few index lookups.
_PURGE_TOMBSTONES = 16


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def exists(self, client_id: str, conversation_id: str) -> bool:
        async with self.db.cursor() as cur:
            row = await fetch_one(
                cur,
                "SELECT 1 AS found FROM conversations WHERE id = %s AND client_id = %s",
                (conversation_id, client_id),
            )
        return row is not None

    async def list_page(
        self, client_id: str, *, limit: int, before: tuple[datetime.datetime, str] | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; `before` is (created_at, id) of the last one of the previous page."""
        where, args = "client_id = %s", list[object]([client_id])
        if before is not None:
            where += " AND (created_at, id) < (%s, %s)"
            args.extend(before)
        async with self.db.cursor() as cur:
            rows = await fetch_all(
                cur,
                f"SELECT {_COLUMNS} FROM conversations WHERE {where}"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (*args, limit + 1),
            )
        return rows[:limit], len(rows) > limit

    async def get(self, client_id: str, conversation_id: str) -> dict[str, Any] | None:
        """The conversation with its most recent messages (oldest first: at most
        MAX_MESSAGES and READ_BUDGET_BYTES of content, the newest whatever its size) and
        whether older ones were left out (`has_more`), or None."""
        async with self.db.cursor() as cur:
            row = await fetch_one(
                cur,
                f"SELECT {_COLUMNS} FROM conversations WHERE id = %s AND client_id = %s",
                (conversation_id, client_id),
            )
            if row is None:
                return None
            sql = messages_within_budget(
                "conversation_id = %(conversation)s AND client_id = %(client)s", "seq DESC"
            )
            args = {"conversation": conversation_id, "client": client_id}
            newest_first, more = await fetch_within_budget(cur, sql, args, MAX_MESSAGES)
        return {**row, "messages": newest_first[::-1], "has_more": more}

    async def delete(
        self, client_id: str, conversation_id: str, *, tombstone_until: datetime.datetime | None
    ) -> bool:
        """Erase the conversation; its messages go with it (ON DELETE CASCADE).

        One not found, given `tombstone_until` (its first answer may still be on its
        way), is erased before it is created: once this client's batches in flight
        have committed (their lock on its history sequence) it is looked for again,
        and if still not there, a tombstone keeps the commit of that answer from
        creating it (relay.stores.history) until then. Expired tombstones are purged
        on the way, a few at a time: only this path adds them.
        """
        async with self.db.cursor() as cur:
            await cur.execute(
                "DELETE FROM conversations WHERE id = %s AND client_id = %s",
                (conversation_id, client_id),
            )
            if cur.rowcount or tombstone_until is None:
                return bool(cur.rowcount)
            async with cur.begin():
                # The lock a batch holds from its first statements to its commit; the row
                # is made if the client has none yet, waiting for a first batch making it.
                # The client's row first, as a batch takes it (relay.stores.history): a
                # client's deletion locks it before cascading to the rest.
                await cur.execute("SELECT FROM clients WHERE id = %s FOR KEY SHARE", (client_id,))
                if await cur.fetchone() is None:
                    return False  # the client was deleted meanwhile, and all it had with it
                await cur.execute(
                    "INSERT INTO history_sequences (client_id, last_seq) VALUES (%s, 0)"
                    " ON CONFLICT (client_id) DO NOTHING;"
                    " SELECT 1 FROM history_sequences WHERE client_id = %s FOR SHARE",
                    (client_id, client_id),
                )
                await cur.execute(
                    "DELETE FROM conversations WHERE id = %s AND client_id = %s",
                    (conversation_id, client_id),
                )
                if cur.rowcount:
                    return True  # its answer committed meanwhile
                await cur.execute(
                    "INSERT INTO conversation_tombstones (conversation_id, client_id, expires_at)"
                    " VALUES (%s, %s, %s) ON CONFLICT (conversation_id, client_id) DO UPDATE"
                    " SET expires_at = GREATEST(conversation_tombstones.expires_at,"
                    " EXCLUDED.expires_at);"
                    " DELETE FROM conversation_tombstones WHERE (conversation_id, client_id) IN ("
                    " SELECT conversation_id, client_id FROM conversation_tombstones"
                    " WHERE expires_at < now() ORDER BY expires_at LIMIT %s)",
                    (conversation_id, client_id, tombstone_until, _PURGE_TOMBSTONES),
                )
        return False

    async def context(
        self, client_id: str, conversation_id: str, budget_chars: int, system: str | None = None
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """/v1/chat's context from this conversation (relay.stores.conversation_context)."""
        return await read_context(self.db, client_id, conversation_id, budget_chars, system)
