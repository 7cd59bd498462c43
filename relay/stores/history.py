"""SQL for writing history: one batch of turns inside the caller's transaction."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.stores.database import Batch

# Every instance LISTENs here; the payload names the clients with new messages.
HISTORY_CHANNEL = "relay_history"
EVERYONE = "*"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
_PAYLOAD_BYTES = 7900


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: str
    status: str = "complete"
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    # Reserved beforehand (relay.stores.messages) when the answer must name its row before commit.
    id: int | None = None
    created_at: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """One answer's rows, ready to write."""

    client_id: str
    conversation_id: str
    title: str
    model: str
    request_id: str
    messages: list[NewMessage]


@dataclass(frozen=True, slots=True)
class WrittenMessage:
    id: int
    seq: int
    created_at: datetime.datetime


def _values(tx: Batch, template: str, rows: Sequence[tuple[object, ...]]) -> str:
    """Rows as one VALUES list, each bound by psycopg2 (never by string formatting)."""
    return ",".join(tx.bind(template, row) for row in rows)


async def write_turns(tx: Batch, turns: Sequence[Turn]) -> list[list[WrittenMessage]]:
    """Insert the turns' conversations and messages; return each turn's rows in order.

    Locks are taken in one global order (conversations by id, then sequences by
    client id) so batches of several instances never deadlock each other.
    """
    if not turns:
        return []
    next_seq = await _upsert_conversations_and_take_sequences(tx, turns)
    rows = []
    for turn in turns:
        for message in turn.messages:
            seq = next_seq[turn.client_id]
            next_seq[turn.client_id] = seq + 1
            rows.append(
                (
                    message.id,
                    turn.conversation_id,
                    turn.client_id,
                    seq,
                    message.role,
                    message.content,
                    orjson.dumps(message.tool_calls).decode() if message.tool_calls else None,
                    message.tool_call_id,
                    turn.model,
                    message.prompt_tokens,
                    message.completion_tokens,
                    message.status,
                    message.latency_ms,
                    turn.request_id,
                    message.created_at,
                )
            )
    values = _values(
        tx,
        "(COALESCE(%s::bigint, nextval('messages_id_seq')),%s,%s,%s,%s,%s,%s::jsonb,%s,%s,%s,%s,"
        "%s,%s,%s,COALESCE(%s::timestamptz, now()))",
        rows,
    )
    await tx.execute(
        "INSERT INTO messages (id, conversation_id, client_id, seq, role, content, tool_calls,"
        " tool_call_id, model, prompt_tokens, completion_tokens, status, latency_ms, request_id,"
        " created_at)"
        f" VALUES {values} RETURNING id, client_id, seq, created_at"
    )
    # RETURNING order is not promised; (client, seq) names each row exactly.
    written = {
        (str(client_id), seq): WrittenMessage(id, seq, created_at)
        for id, client_id, seq, created_at in await tx.fetchall()
    }
    result, at = [], 0
    for turn in turns:
        keys = [(turn.client_id, row[3]) for row in rows[at : at + len(turn.messages)]]
        result.append([written[key] for key in keys])
        at += len(turn.messages)
    return result


async def _upsert_conversations_and_take_sequences(
    tx: Batch, turns: Sequence[Turn]
) -> dict[str, int]:
    """Upsert the conversations, then reserve each client's next sequence numbers
    (row locks held until commit); one round trip for both statements."""
    first: dict[str, Turn] = {}
    counts = Counter[str]()
    for turn in turns:
        first.setdefault(turn.conversation_id, turn)
        counts[turn.client_id] += len(turn.messages)
    conversations = [
        (turn.conversation_id, turn.client_id, turn.title) for _, turn in sorted(first.items())
    ]
    # The WHERE keeps a foreign conversation untouched; messages' composite key
    # then refuses the rows, which cannot happen once the id was checked.
    await tx.execute(
        "INSERT INTO conversations (id, client_id, title)"
        f" VALUES {_values(tx, '(%s,%s,%s)', conversations)}"
        " ON CONFLICT (id) DO UPDATE SET updated_at = now()"
        " WHERE conversations.client_id = EXCLUDED.client_id;"
        " INSERT INTO history_sequences (client_id, last_seq)"
        f" VALUES {_values(tx, '(%s,%s)', sorted(counts.items()))}"
        " ON CONFLICT (client_id) DO UPDATE"
        " SET last_seq = history_sequences.last_seq + EXCLUDED.last_seq"
        " RETURNING client_id, last_seq"
    )
    return {
        str(client_id): last_seq - counts[str(client_id)] + 1
        for client_id, last_seq in await tx.fetchall()
    }


def notify_clients(tx: Batch, client_ids: Sequence[str]) -> None:
    """One NOTIFY per batch, delivered on commit, naming the clients with news."""
    payload = ",".join(sorted(set(client_ids)))
    if len(payload) > _PAYLOAD_BYTES:
        payload = EVERYONE
    tx.defer("SELECT pg_notify(%s, %s)", (HISTORY_CHANNEL, payload))
