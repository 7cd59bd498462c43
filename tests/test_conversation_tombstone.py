"""DELETE means gone, also for a conversation whose first answer is still streaming.

relay names a new conversation (Relay-Conversation-Id) from the answer's first
byte, but creates its row only when the answer commits. A DELETE in between
finds no row: it answers 404, as for any id that names nothing, and leaves a
tombstone so that the commit does not create the conversation afterwards.
"""

import asyncio
import datetime
import hashlib
import os
import time
import uuid
from contextlib import asynccontextmanager

import pytest

from relay.appkeys import DATABASE
from relay.ids import uuid7_text
from relay.services.conversation_ids import answer_horizon_s
from relay.stores.conversations import ConversationStore
from relay.stores.database import connect
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import CONVERSATION, chat, execute, query, waiting_for_lock
from tests.receipt_calls import fetch_receipt


@pytest.fixture
def settings(make_settings):
    return make_settings(rate_limits=False)


@pytest.fixture
async def http(make_client, settings):
    return await make_client(settings)


def uuid7_at(seconds: float) -> str:
    """A well-formed UUIDv7 whose time is `seconds` (Unix time)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (int(seconds * 1000) & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


async def tombstones(database_url):
    return await query(
        database_url,
        "SELECT client_id::text, conversation_id::text, expires_at"
        " FROM conversation_tombstones ORDER BY expires_at",
    )


async def assert_gone(database_url, conversation):
    """Neither the conversation nor a message of it is in the database."""
    assert not await query(
        database_url, "SELECT id FROM conversations WHERE id = %s", (conversation,)
    )
    assert not await query(
        database_url, "SELECT id FROM messages WHERE conversation_id = %s", (conversation,)
    )


@asynccontextmanager
async def holding(database_url, sql, params):
    """`sql` run in a transaction of its own, committed when the block ends: locks
    held meanwhile, as a commit or a DELETE in progress holds them."""
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute("BEGIN; " + sql, params)
            yield
            await cur.execute("COMMIT")
    finally:
        await conn.close()


async def start_slow_stream(http, token, simulator, endpoint):
    simulator.config.tokens = 40
    simulator.config.token_delay = 0.02
    if endpoint == "/v1/chat":
        response = await http.post(
            "/v1/chat",
            json={"message": "a secret question", "model": "gpt-sim", "stream": True},
            headers=bearer(token),
        )
    else:
        response = await chat(http, token, "a secret question", stream=True)
    assert response.status == 200
    # Streaming has begun; what it sent so far is kept, as its client would keep it.
    response.first_bytes = await response.content.readany()
    return response


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/chat"])
async def test_a_new_conversation_erased_while_its_first_answer_streams_is_never_created(
    http, database_url, simulator, endpoint
):
    _, token = await client_with_token(http)
    response = await start_slow_stream(http, token, simulator, endpoint)
    conversation, receipt = response.headers[CONVERSATION], response.headers["x-receipt-id"]

    # Nothing is stored yet: 404, as for any id that names nothing. The erasure holds.
    await assert_error(
        await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token)),
        404,
        "conversation_not_found",
    )
    raw = response.first_bytes + await response.read()
    # As for a conversation erased while a later answer streams: not saved, so not
    # confirmed; an error event instead of the end.
    assert b"data: [DONE]" not in raw and b"message.done" not in raw
    assert b"conversation_deleted" in raw

    await assert_gone(database_url, conversation)
    assert not await query(
        database_url, "SELECT id FROM messages WHERE content LIKE %s", ("%secret question%",)
    )
    await assert_error(
        await http.get(f"/v1/conversations/{conversation}", headers=bearer(token)), 404
    )
    listed = await (await http.get("/v1/conversations", headers=bearer(token))).json()
    assert listed["data"] == []
    # Its receipt is kept, as for `store: false`: hashes of what the client got, the
    # error event that ended it included; nothing of its content.
    signed = await fetch_receipt(http, token, receipt)
    assert signed["status"] == "failed" and signed["completed"] is False
    assert signed["response_sha256"] == hashlib.sha256(raw).hexdigest()
    assert signed["conversation_id"] == conversation
    # The client goes on as before: its next answer is saved, and read back.
    assert (await chat(http, token, "next")).status == 200
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert [m["content"] for m in page["data"] if m["role"] == "user"] == ["next"]


async def test_a_delete_by_another_client_does_not_stop_the_answer_being_saved(
    http, database_url, simulator
):
    _, owner = await client_with_token(http)
    _, stranger = await client_with_token(http)
    response = await start_slow_stream(http, owner, simulator, "/v1/chat/completions")
    conversation = response.headers[CONVERSATION]
    await assert_error(
        await http.delete(f"/v1/conversations/{conversation}", headers=bearer(stranger)), 404
    )
    raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    found = await http.get(f"/v1/conversations/{conversation}", headers=bearer(owner))
    assert found.status == 200
    assert [m["role"] for m in (await found.json())["messages"]] == ["user", "assistant"]


async def test_a_delete_arriving_while_the_answer_commits_erases_what_it_committed(
    http, database_url
):
    """The batch creating the conversation holds the client's history lock, not yet
    committed: the DELETE waits for it, then finds the conversation and erases it."""
    client, token = await client_with_token(http)
    assert (await chat(http, token, "first")).status == 200  # the client's sequence row
    conversation = uuid7_text()
    # A batch that made the conversation and holds the client's history lock.
    async with holding(
        database_url,
        "UPDATE history_sequences SET last_seq = last_seq + 1 WHERE client_id = %(client)s;"
        " INSERT INTO conversations (id, client_id, title)"
        " VALUES (%(conversation)s, %(client)s, 'late');"
        " INSERT INTO messages (conversation_id, client_id, seq, role, content, status)"
        " SELECT %(conversation)s, %(client)s, last_seq, 'user', 'late', 'complete'"
        " FROM history_sequences WHERE client_id = %(client)s",
        {"client": client["id"], "conversation": conversation},
    ):
        deleting = asyncio.create_task(
            http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
        )
        await waiting_for_lock(database_url)  # the DELETE waits for the batch
    assert (await deleting).status == 204
    await assert_gone(database_url, conversation)
    assert await tombstones(database_url) == []  # it was found: nothing left to stop


async def test_an_answer_committing_while_the_tombstone_is_left_waits_and_is_not_saved(
    http, database_url, simulator
):
    """The DELETE's transaction holds the client's history lock while it leaves the
    tombstone: the answer's batch waits for it, then sees the tombstone."""
    client, token = await client_with_token(http)
    assert (await chat(http, token, "first")).status == 200  # the client's history lock
    response = await start_slow_stream(http, token, simulator, "/v1/chat/completions")
    conversation = response.headers[CONVERSATION]
    # As the DELETE does: the client's history lock, then the tombstone.
    async with holding(
        database_url,
        "SELECT 1 FROM history_sequences WHERE client_id = %(client)s FOR SHARE;"
        " INSERT INTO conversation_tombstones (client_id, conversation_id, expires_at)"
        " VALUES (%(client)s, %(conversation)s, now() + interval '1 hour')",
        {"client": client["id"], "conversation": conversation},
    ):
        reading = asyncio.create_task(response.read())
        await waiting_for_lock(database_url)  # the answer's batch waits for the DELETE
    raw = await reading
    assert b"data: [DONE]" not in raw and b"conversation_deleted" in raw
    await assert_gone(database_url, conversation)


async def test_deleting_an_unknown_old_or_random_id_leaves_no_tombstone(
    http, database_url, settings
):
    _, token = await client_with_token(http)
    horizon = answer_horizon_s(settings)
    ids = [
        str(uuid.uuid4()),  # not an id relay makes
        uuid7_at(time.time() - horizon - 60),  # too old for an answer still in flight
        uuid7_at(time.time() + 86400),  # from the future: made up
        "not-a-uuid",
    ]
    for conversation in ids:
        await assert_error(
            await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token)),
            404,
            "conversation_not_found",
        )
    assert await tombstones(database_url) == []


async def test_a_recent_unknown_id_is_tombstoned_until_no_answer_can_still_commit(
    http, database_url, settings
):
    client, token = await client_with_token(http)
    made = time.time() - 5
    conversation = uuid7_at(made)
    await assert_error(
        await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token)), 404
    )
    [row] = await tombstones(database_url)
    assert (row["client_id"], row["conversation_id"]) == (client["id"], conversation)
    expected = datetime.datetime.fromtimestamp(made, datetime.UTC) + datetime.timedelta(
        seconds=answer_horizon_s(settings)
    )
    assert abs((row["expires_at"] - expected).total_seconds()) < 1
    # Deleted again: still one tombstone.
    await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert len(await tombstones(database_url)) == 1


async def test_a_tombstone_expires(http, database_url):
    _, token = await client_with_token(http)
    old, new = uuid7_text(), uuid7_text()
    await http.delete(f"/v1/conversations/{old}", headers=bearer(token))
    assert [row["conversation_id"] for row in await tombstones(database_url)] == [old]
    # Its time passes: no answer begun with that id can commit any more.
    await execute(
        database_url,
        "UPDATE conversation_tombstones SET expires_at = now() - interval '1 second'",
    )
    await http.delete(f"/v1/conversations/{new}", headers=bearer(token))
    assert [row["conversation_id"] for row in await tombstones(database_url)] == [new]


async def test_a_cut_answer_whose_conversation_is_erased_keeps_its_receipt(http, simulator):
    """Its client is told it was cut (an error event), whatever becomes of its content:
    the receipt of exactly that is kept, as for a complete answer refused its end."""
    _, token = await client_with_token(http)
    simulator.config.cut_after = 20
    response = await start_slow_stream(http, token, simulator, "/v1/chat/completions")
    conversation, receipt = response.headers[CONVERSATION], response.headers["x-receipt-id"]
    erased = await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert erased.status == 404  # nothing stored yet: a tombstone
    raw = response.first_bytes + await response.read()
    assert b'"upstream_cut"' in raw
    signed = await fetch_receipt(http, token, receipt)
    assert signed["status"] == "cut"
    assert signed["response_sha256"] == hashlib.sha256(raw).hexdigest()


async def test_a_delete_racing_its_clients_deletion_finds_nothing_rather_than_failing(http):
    # The caller was authenticated, then its client deleted (and all it had with it)
    # before the delete looked for a conversation still to come: nothing to erase.
    conversations = ConversationStore(http.app[DATABASE])
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
    gone = str(uuid.uuid4())
    assert not await conversations.delete(gone, uuid7_text(), tombstone_until=until)
