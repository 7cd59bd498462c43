"""SQL for retention: purging old history messages, and titling anew the conversations
that lose their first question (a title is content too)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import NamedTuple

from relay.stores.database import Cursor, Database, json_rows

# Of a conversation's first question, what a title needs: relay.services.turns makes
# one of its first 120 characters once whitespace runs are one space each. Runs are
# made one space within the first QUESTION_SCAN_CHARS, which bounds the server's work.
QUESTION_CHARS = 2000
QUESTION_SCAN_CHARS = 100_000
# A question has words: something besides what Python's str.split() takes for whitespace,
# which is what the title is made with (PostgreSQL's btrim and \s take fewer: a message
# of line breaks, or of U+3000, was taken for the first question, and the title made of
# it left empty). Every such character lies below U+3001.
BLANKS = "".join(char for char in map(chr, range(0x3001)) if char.isspace())


class Purged(NamedTuple):
    messages: int  # how many were deleted
    retitled: int  # conversations titled anew, having lost their first question


class MessagePurge:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def purge(
        self, older_than: datetime.datetime, *, batch: int, title: Callable[[str], str]
    ) -> Purged:
        """Delete messages, then conversations, last touched before `older_than`.

        In batches, each its own short statements, so a large purge never holds locks
        that would stall the group commit. A title is its conversation's first question
        (made by `title`), content too: before a batch of messages goes, the
        conversations it shortens are titled by their oldest question that stays. So a
        purge cut short (a statement failed, relay stopped) never leaves a purged
        question as a title: the next one finds those messages again, and titles anew.
        """
        deleted = retitled = 0
        while True:
            async with self.db.cursor() as cur:
                await cur.execute(
                    "SELECT id, conversation_id FROM messages WHERE created_at < %s"
                    " ORDER BY created_at LIMIT %s",
                    (older_than, batch),
                )
                rows = await cur.fetchall()
            if not rows:
                break
            conversations = sorted({str(row[1]) for row in rows})
            retitled += await self.retitle(conversations, since=older_than, title=title)
            async with self.db.cursor() as cur:
                await cur.execute(
                    "DELETE FROM messages WHERE id = ANY(%s::bigint[]) AND created_at < %s",
                    ([row[0] for row in rows], older_than),
                )
                deleted += cur.rowcount
            if len(rows) < batch:
                break
        async with self.db.cursor() as cur:
            # A conversation's title is content too: it goes once nothing newer is in it.
            # The age is checked again on the row itself: PostgreSQL re-reads only that
            # when a commit continuing the conversation held it, and must then keep it.
            while True:
                await cur.execute(
                    "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations"
                    " WHERE updated_at < %s LIMIT %s) AND updated_at < %s",
                    (older_than, batch, older_than),
                )
                if cur.rowcount < batch:
                    break
        return Purged(deleted, retitled)

    async def first_questions(
        self, conversation_ids: list[str], *, since: datetime.datetime
    ) -> dict[str, str]:
        """The opening of each conversation's oldest user message with words in it made
        `since` ('' if there is none): what a title is made of, not the whole message (a
        batch of a thousand messages of megabytes each would be gigabytes)."""
        async with self.db.cursor() as cur:
            return await _first_questions(cur, conversation_ids, since)

    async def retitle(
        self, conversation_ids: list[str], *, since: datetime.datetime, title: Callable[[str], str]
    ) -> int:
        """Title conversations anew by their first question made `since` (made by `title`;
        '' for one with none left); how many changed. Their updated_at stays: nothing
        was said.

        A conversation with no question left may be continued by a commit that lands
        after that was read, and have one again: those are titled in a transaction that
        holds them first (as that commit holds them) and reads their question again. A
        commit that lands later finds the title empty, and fills it (relay.stores.history).
        """
        questions = await self.first_questions(conversation_ids, since=since)
        async with self.db.cursor() as cur:
            changed = await _set_titles(
                cur, {k: title(text) for k, text in questions.items() if text}
            )
        if questionless := sorted(key for key, text in questions.items() if not text):
            async with self.db.transaction() as cur:
                await cur.execute(
                    "SELECT FROM conversations WHERE id = ANY(%s::uuid[])"
                    " ORDER BY id FOR NO KEY UPDATE",
                    (questionless,),
                )
                again = await _first_questions(cur, questionless, since)
                changed += await _set_titles(cur, {k: title(text) for k, text in again.items()})
        return changed


async def _first_questions(
    cur: Cursor, conversation_ids: list[str], since: datetime.datetime
) -> dict[str, str]:
    await cur.execute(
        "SELECT c.id, (SELECT"
        " left(regexp_replace(left(m.content, %s), %s, ' ', 'g'), %s)"
        " FROM messages m WHERE m.conversation_id = c.id"
        " AND m.role = 'user' AND m.content ~ %s"
        " AND m.created_at >= %s ORDER BY m.seq LIMIT 1)"
        " FROM conversations c WHERE c.id = ANY(%s::uuid[])",
        (
            QUESTION_SCAN_CHARS,
            f"[{BLANKS}]+",
            QUESTION_CHARS,
            f"[^{BLANKS}]",
            since,
            conversation_ids,
        ),
    )
    return {str(row[0]): row[1] or "" for row in await cur.fetchall()}


async def _set_titles(cur: Cursor, titles: dict[str, str]) -> int:
    """Give conversations new titles; how many changed."""
    if not titles:
        return 0
    # Locked in id order, as a group commit continuing them locks them: in any
    # other, a purge and a commit could each hold a row the other waits for.
    await cur.execute(
        "UPDATE conversations c SET title = t.title FROM ("
        " SELECT x.id, r.title FROM conversations x"
        " JOIN json_to_recordset(%s::json) AS r(id uuid, title text) ON x.id = r.id"
        " WHERE x.title <> r.title ORDER BY x.id FOR NO KEY UPDATE OF x) AS t"
        " WHERE c.id = t.id",
        (json_rows([{"id": key, "title": value} for key, value in titles.items()]),),
    )
    return int(cur.rowcount)
