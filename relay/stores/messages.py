"""SQL for reading history messages: cursor pages and full-text search (purging old
ones is relay.stores.message_purge)."""

from __future__ import annotations

import datetime
from typing import Any

from relay.errors import NOT_RETRIED, DependencyUnavailableError, UnprocessableError
from relay.stores.database import Database
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


def html_snippet(headline: str) -> str:
    """PostgreSQL's headline as HTML: its text escaped, its matches in <mark>…</mark>."""
    return headline.translate(_AS_HTML).translate(_MARKS)
