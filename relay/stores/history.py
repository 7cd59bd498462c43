"""SQL for writing history: a batch of turns, sent with the commit of the caller's transaction."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.stores.database import Batch, Database, json_rows, prepared

# Every instance LISTENs here; the payload names the clients with new messages.
HISTORY_CHANNEL = "relay_history"
# Sent by relay before 2026-11-30 when a batch named too many clients; still
# understood, for instances of both kinds sharing one database.
EVERYONE = "*"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
_PAYLOAD_BYTES = 7900

# The statements of every batch (write_turns, notify_clients), each prepared once per
# connection; write_turns says what each does and why in that order.
_LOCK_CLIENTS = prepared(
    "history_lock_clients",
    "SELECT FROM clients WHERE id = ANY(%s::uuid[]) ORDER BY id FOR KEY SHARE",
)
_NUMBER_MESSAGES = prepared(
    "history_number_messages",
    "INSERT INTO history_sequences (client_id, last_seq)"
    " SELECT * FROM unnest(%s::uuid[], %s::bigint[])"
    " ON CONFLICT (client_id) DO UPDATE"
    " SET last_seq = history_sequences.last_seq + EXCLUDED.last_seq",
)
_TOUCH_CONVERSATIONS = prepared(
    "history_touch_conversations",
    "UPDATE conversations SET updated_at = now(),"
    " title = CASE conversations.title WHEN '' THEN t.title ELSE conversations.title END"
    " FROM (SELECT x.id, c.title FROM conversations x"
    " JOIN json_to_recordset(%s::json) AS c(id uuid, client_id uuid, title text)"
    " ON x.id = c.id AND x.client_id = c.client_id ORDER BY x.id FOR UPDATE OF x) AS t"
    " WHERE conversations.id = t.id",
)
_CREATE_CONVERSATIONS = prepared(
    "history_create_conversations",
    "INSERT INTO conversations (id, client_id, title)"
    " SELECT c.id, c.client_id, c.title"
    " FROM json_to_recordset(%s::json) AS c(id uuid, client_id uuid, title text)"
    " WHERE NOT EXISTS (SELECT 1 FROM conversation_tombstones t"
    " WHERE t.conversation_id = c.id AND t.client_id = c.client_id)"
    " ON CONFLICT (id) DO UPDATE SET updated_at = now()"
    " WHERE conversations.client_id = EXCLUDED.client_id",
)
_INSERT_MESSAGES = prepared(
    "history_insert_messages",
    "INSERT INTO messages (id, conversation_id, client_id, seq, role, name, content,"
    " refusal, tool_calls, tool_call_id, model, prompt_tokens, completion_tokens, status,"
    " latency_ms, request_id, created_at, choice, finish_reason)"
    " SELECT COALESCE(m.id, nextval('messages_id_seq')), m.conversation_id, m.client_id,"
    " s.last_seq - m.back, m.role, m.name, m.content, m.refusal, m.tool_calls,"
    " m.tool_call_id, m.model, m.prompt_tokens, m.completion_tokens, m.status, m.latency_ms,"
    " m.request_id, COALESCE(m.created_at, now()), m.choice, m.finish_reason"
    " FROM json_to_recordset(%s::json) AS m(position integer, id bigint, conversation_id uuid,"
    " client_id uuid, back bigint, role text, name text, content text, refusal text,"
    " tool_calls jsonb, tool_call_id text, model text, prompt_tokens integer,"
    " completion_tokens integer, status text, latency_ms float8, request_id text,"
    " created_at timestamptz, choice smallint, finish_reason text)"
    " JOIN history_sequences s ON s.client_id = m.client_id ORDER BY m.position",
)
_NOTIFY = prepared(
    "history_notify",
    "SELECT pg_notify(%s::text, payload) FROM unnest(%s::text[]) AS payload",
)


# Not frozen: two or more are built per answer, and a frozen __init__ costs 3x (as ReceiptRow).
@dataclass(slots=True)
class NewMessage:
    role: str
    content: str
    status: str = "complete"
    name: str | None = None  # the participant's, as the request named it
    choice: int | None = None  # which answer, when the request asked for several (`n`)
    refusal: str | None = None  # an answer's refusal (OpenAI's), its words in `content` too
    finish_reason: str | None = None  # how an answer ended, as its provider said
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    # Reserved beforehand (relay.stores.messages) when the answer must name its row before commit.
    id: int | None = None
    created_at: datetime.datetime | None = None


@dataclass(slots=True)  # not frozen: one per answer (see NewMessage)
class Turn:
    """One answer's rows, ready to write."""

    client_id: str
    conversation_id: str
    title: str
    model: str
    request_id: str
    messages: list[NewMessage]
    continued: bool = False  # the conversation existed when the request came in


def write_turns(tx: Batch, turns: Sequence[Turn]) -> None:
    """Insert the turns' conversations and messages when `tx` commits.

    Each client's messages take the next numbers of its history sequence, in
    the order given. Locks are taken in one global order (clients, then their
    sequences, by client id; then conversations by id) so batches of several
    instances never deadlock, nor a DELETE that leaves a tombstone
    (relay.stores.conversations), nor a client's deletion.
    """
    if not turns:
        return
    first: dict[str, Turn] = {}
    titles: dict[str, str] = {}  # per conversation: the first of its turns' titles
    counts = Counter[str]()
    for turn in turns:
        first.setdefault(turn.conversation_id, turn)
        titles[turn.conversation_id] = titles.get(turn.conversation_id) or turn.title
        counts[turn.client_id] += len(turn.messages)
    ordered = [turn for _, turn in sorted(first.items())]
    clients = sorted(counts)
    # The clients' rows first, in the share the foreign keys below take anyway:
    # deleting a client locks its row, then its sequence and conversations (ON
    # DELETE CASCADE). Taken after those, a batch and a deletion could deadlock.
    tx.defer(_LOCK_CLIENTS, (clients,))
    # The sequence rows stay locked until commit, so one client's numbers commit
    # in increasing order and `seq > cursor` never passes a row that commits late.
    # Taken first: a DELETE that found no conversation takes this lock before it
    # leaves its tombstone, so the statements below, each reading afresh, see it.
    tx.defer(_NUMBER_MESSAGES, (clients, [counts[client] for client in clients]))
    # A continued conversation is locked (in id order) and touched, never inserted:
    # one erased since its request came in, even by a DELETE still committing when
    # this batch arrives, is then not there, the messages' foreign key refuses the
    # answer's rows, and the client is told the answer was not saved. (An insert
    # that found it gone would bring it back, titled with the new question.) One
    # left untitled takes its title from the new question: retention empties the
    # title of a conversation whose every question it purges, and one continued
    # meanwhile has a question again (relay.stores.message_purge, `purge`).
    continued = [
        {
            "id": turn.conversation_id,
            "client_id": turn.client_id,
            "title": titles[turn.conversation_id],
        }
        for turn in ordered
        if turn.continued
    ]
    if continued:
        tx.defer(_TOUCH_CONVERSATIONS, (json_rows(continued),))
    # A new one is created, unless its client erased it while its first answer was
    # on its way (a tombstone): then it is not there either, and that answer fails
    # as above. The ON CONFLICT WHERE keeps a foreign conversation untouched (the
    # key refuses those rows too; ids are checked first).
    created = [
        {
            "id": turn.conversation_id,
            "client_id": turn.client_id,
            "title": titles[turn.conversation_id],
        }
        for turn in ordered
        if not turn.continued
    ]
    if created:
        tx.defer(_CREATE_CONVERSATIONS, (json_rows(created),))
    left = dict(counts)  # per client: its rows not yet placed, this one included
    rows: list[dict[str, Any]] = []
    for turn in turns:
        for message in turn.messages:
            left[turn.client_id] -= 1
            rows.append(
                {
                    "position": len(rows),
                    "id": message.id,
                    "conversation_id": turn.conversation_id,
                    "client_id": turn.client_id,
                    # How far below the client's new last number this row's number is.
                    "back": left[turn.client_id],
                    "role": message.role,
                    "name": message.name,
                    "choice": message.choice,
                    "content": message.content,
                    "refusal": message.refusal,
                    "finish_reason": message.finish_reason,
                    "tool_calls": message.tool_calls,
                    "tool_call_id": message.tool_call_id,
                    "model": turn.model,
                    "prompt_tokens": message.prompt_tokens,
                    "completion_tokens": message.completion_tokens,
                    "status": message.status,
                    "latency_ms": message.latency_ms,
                    "request_id": turn.request_id,
                    "created_at": message.created_at,
                }
            )
    # The sequence rows hold this batch's last numbers: it has held their locks since.
    tx.defer(_INSERT_MESSAGES, (json_rows(rows),))


async def gone_conversations(db: Database, turns: Sequence[Turn]) -> set[tuple[str, str]]:
    """The (client id, conversation id) of those turns whose conversation `write_turns`
    can no longer write to: erased since the request came in, or, new, erased before it
    was created (a tombstone). One query, asked after a batch failed, so that such
    turns fail alone instead of taking the batch down with them."""
    if not turns:
        return set()
    keys = [
        {"id": turn.conversation_id, "client_id": turn.client_id, "continued": turn.continued}
        for turn in turns
    ]
    async with db.cursor() as cur:
        await cur.execute(
            "SELECT c.client_id, c.id"
            " FROM json_to_recordset(%s::json) AS c(id uuid, client_id uuid, continued boolean)"
            " WHERE (c.continued AND NOT EXISTS (SELECT 1 FROM conversations x"
            " WHERE x.id = c.id AND x.client_id = c.client_id))"
            " OR (NOT c.continued AND EXISTS (SELECT 1 FROM conversation_tombstones t"
            " WHERE t.conversation_id = c.id AND t.client_id = c.client_id))",
            (json_rows(keys),),
        )
        rows = await cur.fetchall()
    return {(str(row[0]), str(row[1])) for row in rows}


async def any_turn_stored(
    db: Database, message_ids: Sequence[int], new_conversation_ids: Sequence[str]
) -> bool:
    """Whether any of these messages (ids reserved before their commit) or new
    conversations (ids made by relay for their first answer) is stored: ids no other
    transaction writes, so one found says the transaction that wrote it committed.
    (One its client erased since reads as never stored: of an answer it erased itself,
    the client is then told that it was not saved.)"""
    async with db.cursor() as cur:
        await cur.execute(
            "SELECT EXISTS (SELECT FROM messages WHERE id = ANY(%s::bigint[]))"
            " OR EXISTS (SELECT FROM conversations WHERE id = ANY(%s::uuid[]))",
            (list(message_ids), list(new_conversation_ids)),
        )
        row = await cur.fetchone()
    return bool(row[0])


def notify_clients(tx: Batch, client_ids: Sequence[str]) -> None:
    """NOTIFYs delivered on commit, naming the clients with news: as few as fit
    PostgreSQL's payload limit, in one statement. Never EVERYONE: that would wake
    every long poll on every instance, each to query again, at every busy batch."""
    payloads: list[str] = []
    names: list[str] = []
    size = 0
    for client_id in sorted(set(client_ids)):
        if names and size + len(client_id) > _PAYLOAD_BYTES:
            payloads.append(",".join(names))
            names, size = [], 0
        names.append(client_id)
        size += len(client_id) + 1
    payloads.append(",".join(names))
    tx.defer(_NOTIFY, (HISTORY_CHANNEL, payloads))
