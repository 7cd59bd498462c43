"""Reads of stored messages: the columns they return, and the byte budget of content
one read carries, cut in SQL."""

from __future__ import annotations

from typing import Any

from relay.stores.database import Cursor, fetch_all

MESSAGE_COLUMNS = (
    "id, conversation_id, role, name, content, refusal, tool_calls, tool_call_id, model,"
    " prompt_tokens, completion_tokens, status, latency_ms, request_id, created_at, choice,"
    " finish_reason"
)

# A response carrying messages carries at most this many bytes of their contents and
# tool calls, whatever its row limit: one message may be as long as a request body
# (RELAY_MAX_BODY_BYTES) or an answer (64 MiB), so 500 of them would be gigabytes in
# relay's memory, several times over (rows, objects, the JSON). 8 MiB holds hundreds
# of ordinary messages, and any chat message whole; a message longer than the budget
# still comes, alone: it was stored, so it must be readable.
READ_BUDGET_BYTES = 8 * 1024 * 1024

# What a message's content, refusal and tool calls weigh, in bytes: each is read (a
# refusal's words twice, as its content too). PostgreSQL knows a text's length without
# reading it (octet_length of a TOASTed value does not detoast it); tool calls, rare
# and short, are measured as the text they go out as.
CONTENT_BYTES = (
    "octet_length(content) + coalesce(octet_length(refusal), 0)"
    " + coalesce(octet_length(tool_calls::text), 0) AS content_bytes"
)


def within_budget(read: str, order: str, columns: str) -> str:
    """`columns` of the rows of the query `read` (which gives them and `content_bytes`,
    in `order`) up to READ_BUDGET_BYTES of content (%(budget)s), the first whatever its
    size, each telling whether another row of `read` follows it (`followed`)."""
    return (
        f"SELECT {columns}, followed FROM (SELECT *, sum(content_bytes) OVER w AS bytes_upto,"
        f" lead(true, 1, false) OVER w AS followed FROM ({read}) page"
        f" WINDOW w AS (ORDER BY {order})) counted"
        # The first row and those after it holding no bytes: bytes_upto = content_bytes.
        " WHERE bytes_upto <= %(budget)s OR bytes_upto = content_bytes"
        f" ORDER BY {order}"
    )


def messages_within_budget(where: str, order: str) -> str:
    """Messages (seq and MESSAGE_COLUMNS) matching `where`, the first %(limit)s in
    `order` of seq, then `within_budget`."""
    read = (
        f"SELECT seq, {MESSAGE_COLUMNS}, {CONTENT_BYTES} FROM messages WHERE {where}"
        f" ORDER BY {order} LIMIT %(limit)s"
    )
    return within_budget(read, order, f"seq, {MESSAGE_COLUMNS}")


async def fetch_within_budget(
    cur: Cursor, sql: str, args: dict[str, Any], limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """At most `limit` rows of `sql` (`within_budget` of a read of %(limit)s rows, given
    one more) and whether more follow them: left out by the limit or by the budget."""
    rows = await fetch_all(cur, sql, {**args, "limit": limit + 1, "budget": READ_BUDGET_BYTES})
    kept = rows[:limit]
    return kept, bool(kept) and kept[-1]["followed"]
