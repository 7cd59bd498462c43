"""What history tests do through relay's API and against its database, written once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.appkeys import ROUTER
from relay.services.answers import Answer
from relay.stores.clients import Client
from relay.stores.database import connect, fetch_all
from tests.api_calls import bearer, client_with_token

CONVERSATION = "Relay-Conversation-Id"


async def query(database_url: str, sql: str, args: Any = None) -> list[dict[str, Any]]:
    """Rows straight from PostgreSQL: what is really stored, not what the API says."""
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            return await fetch_all(cur, sql, args)
    finally:
        await conn.close()


async def execute(database_url: str, sql: str, args: Any = None) -> None:
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
    finally:
        await conn.close()


async def refuse_history_writes(database_url: str) -> None:
    """From now on PostgreSQL refuses every new message row (DROP TRIGGER refuse ON
    messages lets them in again): a history write that fails, the server up."""
    await execute(
        database_url,
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
        " RAISE EXCEPTION 'history writes refused'; END; $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER refuse BEFORE INSERT ON messages"
        " FOR EACH ROW EXECUTE FUNCTION refuse();",
    )


async def waiting_for_lock(database_url: str, count: int = 1) -> list[int]:
    """The backends of this test's database waiting for a lock, once there are `count`."""
    for _ in range(300):
        rows = await query(
            database_url,
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        if len(rows) >= count:
            return [row["pid"] for row in rows]
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} statements waited for a lock")


async def stored_messages(database_url: str, client_id: str | None = None) -> list[dict[str, Any]]:
    where, args = ("WHERE client_id = %s", (client_id,)) if client_id else ("", None)
    return await query(
        database_url, f"SELECT * FROM messages {where} ORDER BY client_id, seq", args
    )


async def assistant_statuses(database_url: str, client_id: str) -> list[str]:
    """The statuses of the client's recorded answers, in commit order."""
    rows = await query(
        database_url,
        "SELECT status FROM messages WHERE client_id = %s AND role = 'assistant' ORDER BY seq",
        (client_id,),
    )
    return [row["status"] for row in rows]


async def chat(
    http: TestClient,
    token: str,
    content: str = "Say hello",
    *,
    conversation: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Any:
    headers = bearer(token)
    if conversation:
        headers[CONVERSATION] = conversation
    body = {"model": "gpt-sim", "messages": messages or [{"role": "user", "content": content}]}
    return await http.post("/v1/chat/completions", json={**body, **extra}, headers=headers)


async def relay_answered_by(
    handler: Any, make_client: Any, make_settings: Any, provider_upstream: Any
) -> tuple[TestClient, str, str]:
    """relay with one provider, whose model "m" `handler` answers, and no rate limits;
    a new client's id and token."""
    upstream = await provider_upstream(handler, "scripted", models={"m": "m"})
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    client, token = await client_with_token(http)
    return http, client["id"], token


async def ask_in_one_conversation(
    http: TestClient, token: str, asked: list[tuple[str, dict[str, Any]]]
) -> str:
    """Each question of `asked` (with its request's other fields) in turn, through
    /v1/chat/completions to model "m", all in one conversation; its id."""
    conversation = None
    for question, fields in asked:
        response = await chat(http, token, question, conversation=conversation, model="m", **fields)
        assert response.status == 200, await response.text()
        await response.read()
        conversation = response.headers[CONVERSATION]
    assert conversation is not None
    return conversation


def recorded_answer(app: web.Application, client: Client, text: str, **fields: Any) -> Answer:
    """An answer as the chat relay hands it to the recorder: `text` is its request id
    and the user's message (unless `fields` say otherwise)."""
    values: dict[str, Any] = {
        "request_id": text,
        "client": client,
        "endpoint": "/v1/chat/completions",
        "route": app[ROUTER].resolve("gpt-sim", ()),
        "stream": False,
        "request": {"messages": [{"role": "user", "content": text}]},
        "request_body": text.encode(),
        "forwarded_body": text.encode(),
        "store": True,
    }
    return Answer(**{**values, **fields})
