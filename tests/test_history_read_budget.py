"""Reads of history carry at most a byte budget of message content, whatever their row
limit, and say honestly that more follow: GET /v1/history, a conversation, a search."""

import uuid

import pytest

from relay.stores import message_reads
from tests.api_calls import bearer, client_with_token
from tests.history_calls import execute, query

BUDGET = 100  # bytes of content a read may carry (8 MiB in relay)


@pytest.fixture
async def http(make_client, make_settings, monkeypatch):
    monkeypatch.setattr(message_reads, "READ_BUDGET_BYTES", BUDGET)
    return await make_client(make_settings(rate_limits=False))


async def stored(database_url, client_id, contents, conversation=None):
    """`contents` stored as one conversation's messages (a new one unless named), in
    order, straight in PostgreSQL; their ids."""
    if conversation is None:
        conversation = str(uuid.uuid4())
        await execute(
            database_url,
            "INSERT INTO conversations (id, client_id, title) VALUES (%s, %s, 'a topic');"
            " INSERT INTO history_sequences (client_id, last_seq) VALUES (%s, 0)"
            " ON CONFLICT (client_id) DO NOTHING",
            (conversation, client_id, client_id),
        )
    for n, content in enumerate(contents):
        await execute(
            database_url,
            "UPDATE history_sequences SET last_seq = last_seq + 1 WHERE client_id = %s;"
            " INSERT INTO messages (conversation_id, client_id, seq, role, content, status)"
            " SELECT %s, %s, last_seq, %s, %s, 'complete' FROM history_sequences"
            " WHERE client_id = %s",
            (client_id, conversation, client_id, ("user", "assistant")[n % 2], content, client_id),
        )
    rows = await query(
        database_url,
        "SELECT id FROM messages WHERE conversation_id = %s ORDER BY seq",
        (conversation,),
    )
    ids = [row["id"] for row in rows]
    return conversation, ids


async def get(http, token, path, **params):
    response = await http.get(
        path, params={key: str(value) for key, value in params.items()}, headers=bearer(token)
    )
    assert response.status == 200, await response.text()
    return await response.json()


def content_bytes(messages):
    return sum(len(m["content"].encode()) for m in messages)


async def test_a_page_cut_by_the_budget_says_more_follow_and_its_cursor_leads_to_the_rest(
    http, database_url
):
    client, token = await client_with_token(http)
    # 30 characters of "é" are 60 bytes: the budget counts bytes, not characters.
    contents = ["a" * 40, "b" * 40, "é" * 30, "c" * 10, "d" * 90, "e" * 250, "f" * 5, "g" * 5]
    _, ids = await stored(database_url, client["id"], contents)
    pages, seen, after = [], [], ""
    while True:
        page = await get(http, token, "/v1/history", limit=500, after=after)
        pages.append([m["content"] for m in page["data"]])
        seen += [m["id"] for m in page["data"]]
        assert page["data"], "a page with more to follow is never empty"
        assert content_bytes(page["data"]) <= BUDGET or len(page["data"]) == 1
        after = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids  # every message, exactly once, in commit order
    assert pages == [
        ["a" * 40, "b" * 40],  # 80 bytes; the next (60) would pass 100
        ["é" * 30, "c" * 10],
        ["d" * 90],
        ["e" * 250],  # longer than the budget: alone
        ["f" * 5, "g" * 5],
    ]
    # The last page's cursor has nothing after it, and says so.
    assert await get(http, token, "/v1/history", after=after) == {
        "data": [],
        "next_cursor": after,
        "has_more": False,
    }


async def test_a_long_poll_with_messages_waiting_is_cut_by_the_budget_too(http, database_url):
    client, token = await client_with_token(http)
    conversation, ids = await stored(database_url, client["id"], ["a" * 70, "b" * 70])
    page = await get(http, token, "/v1/history", wait=5, conversation_id=conversation)
    assert [m["id"] for m in page["data"]] == ids[:1]
    assert page["has_more"] is True
    rest = await get(http, token, "/v1/history", wait=5, after=page["next_cursor"])
    assert [m["id"] for m in rest["data"]] == ids[1:]
    assert rest["has_more"] is False


async def test_a_message_longer_than_the_budget_is_read_alone(http, database_url):
    client, token = await client_with_token(http)
    conversation, _ = await stored(database_url, client["id"], ["x" * 1000, "y"])
    page = await get(http, token, "/v1/history")
    assert [m["content"] for m in page["data"]] == ["x" * 1000]
    assert page["has_more"] is True
    # Newest last in a conversation: the newest message, however long, comes.
    _, newest = await stored(database_url, client["id"], ["z" * 1000], conversation)
    got = await get(http, token, f"/v1/conversations/{conversation}")
    assert [m["id"] for m in got["messages"]] == newest[-1:]
    assert got["messages"][0]["content"] == "z" * 1000
    assert got["has_more"] is True


async def test_a_conversation_read_holds_its_most_recent_messages_within_the_budget(
    http, database_url
):
    client, token = await client_with_token(http)
    conversation, ids = await stored(
        database_url, client["id"], ["a" * 60, "b" * 30, "c" * 30, "d" * 30, "e" * 10]
    )
    got = await get(http, token, f"/v1/conversations/{conversation}")
    # The newest first until the next would pass 100 bytes (10 + 30 + 30 + 30), oldest first.
    assert [m["id"] for m in got["messages"]] == ids[1:]
    assert got["has_more"] is True
    # What was left out is there for GET /v1/history with conversation_id.
    page = await get(http, token, "/v1/history", conversation_id=conversation)
    assert [m["id"] for m in page["data"]] == ids[:2]  # 60 + 30 bytes


async def test_small_messages_come_as_before(http, database_url, monkeypatch):
    monkeypatch.setattr(message_reads, "READ_BUDGET_BYTES", 8 * 1024 * 1024)
    client, token = await client_with_token(http)
    contents = [f"message {n}" for n in range(7)]
    conversation, ids = await stored(database_url, client["id"], contents)
    page = await get(http, token, "/v1/history", limit=4)
    assert [m["id"] for m in page["data"]] == ids[:4]
    assert page["has_more"] is True
    rest = await get(http, token, "/v1/history", limit=4, after=page["next_cursor"])
    assert [m["id"] for m in rest["data"]] == ids[4:]
    assert rest["has_more"] is False
    whole = await get(http, token, f"/v1/conversations/{conversation}")
    assert [m["content"] for m in whole["messages"]] == contents
    assert whole["has_more"] is False


async def test_search_results_are_held_to_the_budget_and_say_more_were_found(http, database_url):
    client, token = await client_with_token(http)
    _, ids = await stored(
        database_url, client["id"], ["penguin " + "a" * 60, "penguin " + "b" * 60]
    )
    found = await get(http, token, "/v1/history/search", q="penguin")
    assert [m["id"] for m in found["data"]] == ids[1:]  # equal ranks: the newest first
    assert found["has_more"] is True
    _, more = await stored(database_url, client["id"], ["walrus"])
    alone = await get(http, token, "/v1/history/search", q="walrus")
    assert ([m["id"] for m in alone["data"]], alone["has_more"]) == (more, False)
