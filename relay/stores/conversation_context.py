"""SQL for /v1/chat's context: a conversation's latest system message and most recent
exchanges within a character budget, read at a cost that follows the budget."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import aclosing
from typing import Any

from relay.stores.database import Cursor, Database, fetch_all, fetch_one

_CONTEXT_PAGE = 64  # messages read at a time for /v1/chat's context
# Messages the context's walk passes over before it ends: those that cannot be
# context or give way take none of the budget, which cannot bound them. More than
# one request's turn may add (relay.services.turns.MAX_TURN_MESSAGES: a question sent
# as that many user messages, say), so one such turn leaves the ones before it.
_CONTEXT_PASSED_OVER = 1024
# A conversation's messages are found by it, scoped to the client by its row: with
# client_id = %s among their conditions, PostgreSQL may read them in seq order off the
# (client_id, seq) index, through all of the client's other conversations.
_CLIENTS_CONVERSATION = (
    "EXISTS (SELECT FROM conversations WHERE id = %(conversation)s AND client_id = %(client)s)"
)
# Found by messages_conversation_system_idx (system messages only), not by reading
# back through the conversation.
LATEST_SYSTEM_SQL = (
    "SELECT content FROM messages WHERE conversation_id = %(conversation)s"
    f" AND {_CLIENTS_CONVERSATION} AND role = 'system' ORDER BY seq DESC LIMIT 1"
)


async def read_context(
    db: Database, client_id: str, conversation_id: str, budget_chars: int, system: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The latest system message (or `system`, the request's, which replaces it for
    this turn) and the most recent exchanges (a question and its answer) whose
    contents fit in `budget_chars` together with it, oldest first.

    The system message is never cut: past the budget by itself, it goes alone. The
    first exchange, newest first, that does not fit whole goes cut to what is left
    (`fit_exchange`), so that one long answer cannot take the whole conversation out
    of the next turn's context; older ones are left out. The new message is not
    counted: it is sent whole (MAX_MESSAGE_CHARS and the body limit bound it), and
    counting it would leave a long one no context at all.

    An answer that failed or was cut (the provider broke off) is left out with its
    question: the client was given an error, not that text, which the model would
    take for its answer. One the client stopped (`cancelled`) stays: the user saw
    that text and may refer to it.
    """
    async with db.transaction() as cur:
        system_text = system
        if system_text is None:
            stored = await fetch_one(
                cur, LATEST_SYSTEM_SQL, {"conversation": conversation_id, "client": client_id}
            )
            system_text = stored["content"] if stored else None
        left = budget_chars - len(system_text or "")
        if left <= 0:
            return system_text, []
        newest_first = _newest_first(cur, client_id, conversation_id, left + 1)
        async with aclosing(newest_first) as rows:
            recent = await recent_exchanges(rows, left)
    return system_text, recent


# The walk for /v1/chat's context, newest first: a cursor over the conversation's
# messages, fetched a page at a time. Planned as a cursor, for its first rows, it
# reads the (conversation_id, seq) index backward whatever PostgreSQL guesses of the
# conversation's size (stale statistics make a long one look short, and a query
# planned whole then sorts all of it for each page), and holds its window sums from
# page to page. Its rows come in its windows' order: an ORDER BY (or a LIMIT;
# `_newest_first` ends it) would have it planned for all of them. Nor is it compiled
# (JIT): costed for the whole of a long conversation, it would be, some 20 ms for the
# few pages read. Each row is a message, reading of it only what `recent_exchanges`
# can use:
# - `role` is NULL for one that cannot be context (tool and system messages, empty
#   ones, failed or cut answers), and `gives_way` is true for one of the role of the
#   message after it that can (for the newest, 'user'): seq * 2 + 1 for an answer,
#   the smallest of those after it is the nearest; neither has any content;
# - at most `chars` characters (the budget and one more) from where `fit_exchange`
#   keeps it, a question's end and an answer's beginning: one read in part is still
#   longer than any room it is fitted in, and is cut as it would be read whole;
# - nothing once the messages after it hold twice what `chars` characters can take
#   in bytes (4 each at most; PostgreSQL knows a message's bytes without reading
#   it), counting each up to that: by then they used the budget up, but for the
#   answer the one before would pair with.
_CONTEXT_WALK_SQL = f"""
SET LOCAL jit = off;
DECLARE context_walk NO SCROLL CURSOR FOR
SELECT seq, role, name, gives_way, CASE WHEN role IS NULL OR gives_way
    OR bytes_before >= 8 * %(chars)s::bigint THEN ''
  WHEN role = 'user' THEN right(content, %(chars)s) ELSE left(content, %(chars)s) END AS content
FROM (SELECT *, coalesce(sum(least(octet_length(content), 4 * %(chars)s::bigint))
    FILTER (WHERE NOT gives_way) OVER after_it, 0) AS bytes_before
  FROM (SELECT *, coalesce((role = 'assistant') = (min(seq * 2 + (role = 'assistant')::int)
      FILTER (WHERE role IS NOT NULL) OVER after_it %% 2 = 1), role = 'user') AS gives_way
    FROM (SELECT seq, content, name, CASE WHEN role IN ('user', 'assistant') AND content <> ''
        AND status NOT IN ('failed', 'cut') AND coalesce(choice, 0) = 0 THEN role END AS role
      FROM messages WHERE conversation_id = %(conversation)s AND {_CLIENTS_CONVERSATION}
    ) walked
    WINDOW after_it AS (ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) turns
  WINDOW after_it AS (ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) counted
"""


async def _newest_first(
    cur: Cursor, client_id: str, conversation_id: str, chars: int
) -> AsyncGenerator[dict[str, Any]]:
    """A conversation's user and assistant messages that may be context, newest first,
    read a page at a time and in part (`_CONTEXT_WALK_SQL`), in a transaction `cur` is
    in: the cost follows the budget, not the conversation's length nor its messages'.

    Each message yielded takes a character of the budget at least, so `chars` of them
    use it up. Those passed over (that cannot be context, or give way) take none: after
    _CONTEXT_PASSED_OVER of them the walk ends, older exchanges left out."""
    args = {"client": client_id, "conversation": conversation_id, "chars": chars}
    await cur.execute(_CONTEXT_WALK_SQL, args)
    passed = 0
    while True:
        page = await fetch_all(cur, f"FETCH {_CONTEXT_PAGE} FROM context_walk")
        for row in page:
            if row["role"] is not None and not row["gives_way"]:
                yield row
                continue
            passed += 1
            if passed > _CONTEXT_PASSED_OVER:
                return
        if len(page) < _CONTEXT_PAGE:
            return


async def recent_exchanges(
    rows: AsyncIterable[dict[str, Any]], budget: int
) -> list[dict[str, str]]:
    """The most recent exchanges of `rows` (newest first) within `budget` characters,
    oldest first: whole while they fit, then the first that does not, cut to fit.

    Turns alternate as POST /v1/chat sends them (relay.services.native_chat): of two
    messages of one role in a row (a question whose answer was left out, then its
    retry) the earlier gives way, and the newest stored is an answer, since the new
    question follows; a message that will not be sent takes none of the budget.
    """
    taken: list[dict[str, str]] = []
    later, answer, answer_name = "user", "", None
    async for row in rows:
        role, content = row["role"], row["content"]
        if role == later:
            continue
        later = role
        if role == "assistant":
            answer, answer_name = content, row["name"]
            continue
        if len(content) + len(answer) > budget:
            cut = fit_exchange(content, answer, budget)
            if cut is not None:
                taken += [
                    _turn("assistant", cut[1], answer_name),
                    _turn("user", cut[0], row["name"]),
                ]
            break
        taken += [_turn("assistant", answer, answer_name), _turn("user", content, row["name"])]
        budget -= len(content) + len(answer)
        if budget <= 0:
            break
    return taken[::-1]


def fit_exchange(question: str, answer: str, room: int) -> tuple[str, str] | None:
    """A question and its answer cut to `room` characters together, marked where text
    was taken out, or None when that would leave nothing of either.

    The question keeps its end and the answer its beginning, so what is kept is where
    the two meet: a long question is mostly material (a pasted text, code) with what is
    asked of it last, and an answer says first what it is (the essay's opening, the
    code's definitions). The question has up to half the room, more if the answer needs
    less, and the answer the rest.
    """
    question_room = min(len(question), max(room // 2, room - len(answer)))
    kept = (_keep_end(question, question_room), _keep_start(answer, room - question_room))
    return None if "" in kept else kept


# What stands for the text taken out of a message cut to fit the context; counted in it.
_START_CUT, _END_CUT = "[…]\n", "\n[…]"


def _keep_end(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    keep = room - len(_START_CUT)
    return _START_CUT + text[-keep:] if keep > 0 else ""


def _keep_start(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    keep = room - len(_END_CUT)
    return text[:keep] + _END_CUT if keep > 0 else ""


# A participant's name as every provider takes it (OpenAI's first rule for it, the
# strictest): one stored from another provider's request is left out rather than
# have this one refuse the whole context.
_PORTABLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _turn(role: str, content: str, name: str | None = None) -> dict[str, str]:
    """A message of the context, named as it was stored (POST /v1/chat/completions
    keeps the `name` of a request's messages)."""
    if name is not None and _PORTABLE_NAME.fullmatch(name):
        return {"role": role, "name": name, "content": content}
    return {"role": role, "content": content}
