"""SQL for reading history messages (cursor pages, full-text search) and purging old ones."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, NamedTuple

from relay.errors import NOT_RETRIED, DependencyUnavailableError, UnprocessableError
from relay.stores.database import Cursor, Database, json_rows
from relay.stores.database_failures import statement_cancelled
from relay.stores.message_reads import (
    CONTENT_BYTES,
    MESSAGE_COLUMNS,
    fetch_within_budget,
    messages_within_budget,
    within_budget,
)

# PostgreSQL marks the matches with two control characters taken out of the text
# first; relay escapes the snippet as HTML and only then makes them <mark>…</mark>.
# So a message holding markup (an answer a prompt injection shaped, say) shows as
# text in an app that renders snippets as HTML, and cannot forge a mark.
_START, _STOP, _LT = "\x01", "\x02", "\x03"
_HEADLINE = f"StartSel={_START}, StopSel={_STOP}, MaxWords=30, MinWords=10, MaxFragments=2"
_AS_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})
_MARKS = str.maketrans({_START: "<mark>", _STOP: "</mark>", _LT: "&lt;"})
# PostgreSQL's parser takes `<String>` in `Vec<String>` (and `<b and c>` in
# `a<b and c>d`) for a tag and leaves its words out. Each such token begins at a
# "<", so the stored vector (sql/007), the query and the headline read the text
# with every "<" a separator and the control characters dropped:
# translate(text, _TAKEN, ' ') for the first two, translate(text, _TAKEN, _LT) for
# the headline, whose "<" must come back (_LT parses as a space does).
_TAKEN = "<" + _START + _STOP + _LT
# The snippet is cut from a message's first 10,000 characters: ts_headline parses
# all the text it is given for every result, and over the 100,000 the search
# vector covers, a page of long matches costs the database seconds. A match
# further in gets the message's opening, unmarked, as its snippet.
_HEADLINE_CHARS = 10_000
# The share of relay's database timeout a search may run for on the server: it is
# stopped there before relay gives up waiting, and never runs on after its client
# had an error. A search kept waiting for a lock (a migration's) gives up a little
# sooner, with another error: a table relay cannot read is an outage, not the
# query's cost.
_SERVER_SHARE = 0.9
_LOCK_SHARE = 0.8
# Ranking is bounded twice. Only the newest matches are ranked (finding them reads
# no word positions), so a word in every message costs as much as one in this many:
# an older message that would rank higher is not found while this many newer match.
# And they are ranked by how often the query's words occur in them (`marked`: any
# of them, each further occurrence counting less), not by how close together:
# ts_rank of the query itself compares the positions of every pair of its words
# (up to 256 each), ~190 ms per long message for 32 words, against well under 1 ms.
RANKED_MATCHES = 500
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
_QUERY = "websearch_to_tsquery('english', translate(%(query)s, %(taken)s, ' '))"
_WORDS_QUERY = "websearch_to_tsquery('english', translate(%(marked)s, %(taken)s, ' '))"
_FOUND = (
    f"SELECT c.*, ts_rank(c.search, {_WORDS_QUERY}) AS rank, {CONTENT_BYTES} FROM ("
    f" SELECT m.* FROM messages m WHERE m.client_id = %(client_id)s AND m.search @@ {_QUERY}"
    "  {filter} ORDER BY m.seq DESC LIMIT %(candidates)s"
    ") c ORDER BY rank DESC, c.id DESC LIMIT %(limit)s"
)
_RANKED = within_budget(_FOUND, "rank DESC, id DESC", f"{MESSAGE_COLUMNS}, rank")
_SEARCH_TEMPLATE = (
    "SET LOCAL statement_timeout = %(server_ms)s; SET LOCAL lock_timeout = %(lock_ms)s;"
    f" SELECT {MESSAGE_COLUMNS}, rank, followed,"
    " ts_headline('english', translate(left(content, %(headline_chars)s), %(taken)s, %(lt)s),"
    f"  {_WORDS_QUERY}, %(headline)s) AS snippet"  # for the rows returned only
    f" FROM ({_RANKED}) found ORDER BY rank DESC, id DESC"
)
_SEARCH = _SEARCH_TEMPLATE.format(filter="")
_SEARCH_CONVERSATION = _SEARCH_TEMPLATE.format(filter="AND m.conversation_id = %(conversation_id)s")


class SearchTooCostlyError(UnprocessableError):
    """The server stopped a search for running too long: what the query costs over
    this client's messages, not a database that is down. The same query would cost
    the same again, so it is not retried (a 422; OpenAI's SDKs retry a 503)."""

    code = "search_too_costly"

    def __init__(self) -> None:
        super().__init__(
            "This search took the database too long; narrow it: fewer or rarer words,"
            " or one conversation (conversation_id).",
            param="q",
            headers=dict(NOT_RETRIED),
        )


class Purged(NamedTuple):
    messages: int  # how many were deleted
    retitled: int  # conversations titled anew, having lost their first question


class MessageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def pool_size(self) -> int:
        """How many connections the store's queries share (searches get a few)."""
        return self.db.pool_stats()["max"]

    async def reserve(self, count: int) -> tuple[list[int], datetime.datetime]:
        """`count` ids, in increasing order, and a time for messages written later: for
        an answer that names its row in the bytes it sends (and signs) before the group
        commit writes the rows (its turn's take the ids before its own)."""
        async with self.db.cursor() as cur:
            await cur.execute(
                "SELECT nextval('messages_id_seq'), now() FROM generate_series(1, %s)", (count,)
            )
            rows = await cur.fetchall()
        return sorted(row[0] for row in rows), rows[0][1]

    async def page(
        self, client_id: str, *, after_seq: int, limit: int, conversation_id: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """This client's messages with seq > after_seq, in commit order: at most `limit`
        and READ_BUDGET_BYTES of content (the first whatever its size), and whether more
        follow.

        Sequence numbers of one client are handed out under a row lock held to
        commit (relay.stores.history), so a row never becomes visible behind one
        a reader has already passed.
        """
        where = "client_id = %(client)s AND seq > %(after)s"
        if conversation_id is not None:
            where += " AND conversation_id = %(conversation)s"
        args = {"client": client_id, "after": after_seq, "conversation": conversation_id}
        async with self.db.cursor() as cur:
            return await fetch_within_budget(cur, messages_within_budget(where, "seq"), args, limit)

    async def search(
        self,
        client_id: str,
        query: str,
        *,
        marked: str,
        limit: int,
        conversation_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages matching a web-search style query: its newest matches, best first,
        with a snippet marking the words of `marked` (web-search syntax too), which
        also rank them; at most `limit` and READ_BUDGET_BYTES of content (the first
        whatever its size), and whether more were found. SearchTooCostlyError if the
        server stopped it for its time."""
        server_ms = max(2, int(self.db.timeout * 1000 * _SERVER_SHARE))
        args = {
            "server_ms": server_ms,
            "lock_ms": max(1, int(server_ms * _LOCK_SHARE)),
            "client_id": client_id,
            "conversation_id": conversation_id,
            "query": query,
            "marked": marked,
            "taken": _TAKEN,
            "lt": _LT,
            "headline": _HEADLINE,
            "headline_chars": _HEADLINE_CHARS,
            "candidates": RANKED_MATCHES,
        }
        sql = _SEARCH if conversation_id is None else _SEARCH_CONVERSATION
        try:
            async with self.db.cursor() as cur:
                rows, more = await fetch_within_budget(cur, sql, args, limit)
        except DependencyUnavailableError as error:
            # By its statement_timeout (a lock_timeout is another error, an outage).
            if statement_cancelled(error):
                raise SearchTooCostlyError() from error
            raise
        for row in rows:
            row["snippet"] = html_snippet(row["snippet"])
        return rows, more

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


def html_snippet(headline: str) -> str:
    """PostgreSQL's headline as HTML: its text escaped, its matches in <mark>…</mark>."""
    return headline.translate(_AS_HTML).translate(_MARKS)
