"""GET /v1/history, /v1/history/search and /v1/conversations: what a client reads back."""

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator

import orjson
import pytest

from relay.appkeys import IN_FLIGHT
from relay.services.history import HistoryService
from relay.services.history_watch import HistoryWatch
from relay.stores import conversations
from relay.stores.database import Cursor, connect
from relay.stores.history import HISTORY_CHANNEL
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import CONVERSATION, chat, execute, query, waiting_for_lock
from tests.receipt_calls import fetch_receipt


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def history(http, token, **params):
    params = {key: str(value) for key, value in params.items()}
    return await http.get("/v1/history", params=params, headers=bearer(token))


async def test_history_pages_oldest_first_and_the_cursor_moves_on(http):
    _, token = await client_with_token(http)
    for n in range(3):
        assert (await chat(http, token, f"question {n}")).status == 200
    response = await history(http, token, limit=4)
    assert response.status == 200
    page = await response.json()
    assert set(page) == {"data", "next_cursor", "has_more"}
    assert page["has_more"] is True
    assert [m["role"] for m in page["data"]] == ["user", "assistant", "user", "assistant"]
    assert page["data"][0]["content"] == "question 0"
    assert page["data"][1]["status"] == "complete"
    assert page["data"][1]["usage"]["completion_tokens"] > 0
    rest = await (await history(http, token, after=page["next_cursor"])).json()
    assert [m["content"] for m in rest["data"] if m["role"] == "user"] == ["question 2"]
    assert rest["has_more"] is False
    ids = [m["id"] for m in page["data"] + rest["data"]]
    assert ids == sorted(ids) and len(ids) == 6
    empty = await (await history(http, token, after=rest["next_cursor"])).json()
    assert empty == {"data": [], "next_cursor": rest["next_cursor"], "has_more": False}


async def test_history_of_one_conversation(http):
    _, token = await client_with_token(http)
    first = (await chat(http, token, "first")).headers[CONVERSATION]
    await chat(http, token, "second")
    page = await (await history(http, token, conversation_id=first)).json()
    assert [m["content"] for m in page["data"] if m["role"] == "user"] == ["first"]
    assert {m["conversation_id"] for m in page["data"]} == {first}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"after": "not a cursor"}, "after"),
        ({"after": "eyJzIjotMX0"}, "after"),  # {"s":-1}
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"wait": 31}, "wait"),
        ({"wait": -1}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"wait": "1_0"}, "wait"),  # float() reads these: 10,
        ({"wait": "\u0663"}, "wait"),  # 3 in Arabic-Indic digits,
        ({"wait": "1e1"}, "wait"),  # and 10 again
        ({"conversation_id": ""}, "conversation_id"),  # not "every conversation"
    ],
)
async def test_bad_history_parameters_are_400(http, params, param):
    _, token = await client_with_token(http)
    error = await assert_error(await history(http, token, **params), 400)
    assert error["param"] == param


NO_ID = "00000000-0000-0000-0000-000000000000"


async def test_a_cursor_in_a_time_zone_postgresql_refuses_still_pages(http):
    # Python reads offsets to ±23:59, PostgreSQL only to ±15:59 (it answered 500).
    _, token = await client_with_token(http)
    cursor = {"t": "2999-01-01T00:00:00+16:00", "c": NO_ID}
    forged = base64.urlsafe_b64encode(orjson.dumps(cursor)).decode().rstrip("=")
    response = await http.get("/v1/conversations", params={"after": forged}, headers=bearer(token))
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "cursor",
    [
        {"t": "2024-01-01T00:00:00+00:00", "c": 5},
        {"t": 5, "c": []},
        {"t": "2024-01-01T00:00:00", "c": NO_ID},  # no time zone
        {"t": "0001-01-01T00:00:00+23:59", "c": NO_ID},  # before year 1 in UTC
    ],
)
async def test_a_forged_conversations_cursor_is_400(http, cursor):
    _, token = await client_with_token(http)
    forged = base64.urlsafe_b64encode(orjson.dumps(cursor)).decode().rstrip("=")
    response = await http.get("/v1/conversations", params={"after": forged}, headers=bearer(token))
    error = await assert_error(response, 400)
    assert error["param"] == "after"


async def test_a_long_poll_returns_as_soon_as_a_message_is_committed(http):
    _, token = await client_with_token(http)
    start = await (await history(http, token)).json()
    poll = asyncio.ensure_future(history(http, token, after=start["next_cursor"], wait=20))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await chat(http, token, "wake up")
    async with asyncio.timeout(5):
        response = await poll
    page = await response.json()
    assert [m["content"] for m in page["data"]][:1] == ["wake up"]


async def test_a_long_poll_with_nothing_new_answers_empty_when_the_time_is_up(http):
    _, token = await client_with_token(http)
    await chat(http, token)
    start = await (await history(http, token)).json()
    loop = asyncio.get_running_loop()
    began = loop.time()
    page = await (await history(http, token, after=start["next_cursor"], wait=0.5)).json()
    assert loop.time() - began >= 0.45
    assert page == {"data": [], "next_cursor": start["next_cursor"], "has_more": False}


async def held_poll(http, token, wait: float) -> tuple[asyncio.Future, str, float]:
    """A poll from the end of this client's history, once it is held (it read nothing
    new); with that cursor and when it was sent."""
    start = (await (await history(http, token)).json())["next_cursor"]
    began = asyncio.get_running_loop().time()
    poll = asyncio.ensure_future(history(http, token, after=start, wait=wait))
    await asyncio.sleep(0.2)
    assert not poll.done()
    return poll, start, began


@contextlib.asynccontextmanager
async def messages_unanswered(database_url: str) -> AsyncIterator[Cursor]:
    """No read of the messages is answered while this holds them, on its cursor."""
    holder = await connect(database_url, timeout=10)
    try:
        async with holder.cursor() as cur:
            await cur.execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            yield cur
            await cur.execute("ROLLBACK")
    finally:
        await holder.close()


async def test_a_long_poll_answers_when_the_time_is_up_though_postgres_stopped_answering(
    make_client, make_settings, database_url
):
    """Nothing announced while the poll was held (its listener live throughout), there
    is nothing new to read: a PostgreSQL that stopped answering meanwhile does not keep
    it past its time (then with a 503)."""
    http = await make_client(make_settings(database_timeout=3.0))
    _, token = await client_with_token(http)
    poll, start, began = await held_poll(http, token, wait=1)
    async with messages_unanswered(database_url):
        response = await poll
        took = asyncio.get_running_loop().time() - began
    assert response.status == 200
    assert await response.json() == {"data": [], "next_cursor": start, "has_more": False}
    assert 0.95 <= took < 2.0


async def test_a_long_poll_woken_by_losing_its_listener_answers_503_by_its_time(
    make_client, make_settings, database_url, monkeypatch
):
    """Losing the listener wakes every held poll to read again (commits may have gone
    unannounced meanwhile). Against a PostgreSQL that is not answering, that read held
    the poll RELAY_DATABASE_TIMEOUT past its wait (a 503 at 5.2 s here); it has what is
    left of the wait and READ_GRACE_S, then the client is told the database did not
    answer."""
    monkeypatch.setattr(HistoryService, "READ_GRACE_S", 0.25)
    http = await make_client(make_settings(database_timeout=5.0))
    _, token = await client_with_token(http)
    poll, start, began = await held_poll(http, token, wait=0.5)
    async with messages_unanswered(database_url) as cur:
        await cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
        )
        assert await cur.fetchall() == [(True,)]
        response = await poll
        took = asyncio.get_running_loop().time() - began
    error = await assert_error(response, 503, "dependency_unavailable")
    assert error["type"] == "service_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert 0.5 <= took < 1.25
    # Its read was cut short, not its connection's pool: the next poll reads from there.
    page = await (await history(http, token, after=start)).json()
    assert page == {"data": [], "next_cursor": start, "has_more": False}


async def test_a_long_poll_woken_late_by_a_commit_reads_it_though_postgres_is_slow(
    make_client, make_settings, database_url, monkeypatch
):
    """A poll woken by its client's commit reads with RELAY_DATABASE_TIMEOUT, as any read
    does: PostgreSQL announced that commit, so it is up. Woken late in its wait, the read
    had only the rest of the wait and READ_GRACE_S, and a database merely slow answered
    503. Following next_cursor still sees each message once."""
    monkeypatch.setattr(HistoryService, "READ_GRACE_S", 0.25)
    http = await make_client(make_settings(database_timeout=5.0, rate_limits=False))
    client, token = await client_with_token(http)
    poll, _, began = await held_poll(http, token, wait=1)
    loop = asyncio.get_running_loop()
    async with messages_unanswered(database_url):
        await asyncio.sleep(began + 0.9 - loop.time())
        # What a commit of the client's announces (one made now would wait for the lock).
        await execute(database_url, "SELECT pg_notify(%s, %s)", (HISTORY_CHANNEL, client["id"]))
        await waiting_for_lock(database_url)  # the poll's read
        answer = asyncio.ensure_future(chat(http, token, "slow"))
        await waiting_for_lock(database_url, 2)  # and that answer's commit
        await asyncio.sleep(began + 1.75 - loop.time())  # well past the wait and its grace
    response = await poll
    assert response.status == 200, await response.text()
    assert loop.time() - began >= 1.75
    assert (await answer).status == 200
    first = await response.json()
    rest = await (await history(http, token, after=first["next_cursor"])).json()
    seen = first["data"] + rest["data"]
    assert [(m["role"], m["content"]) for m in seen][:1] == [("user", "slow")]
    assert len(seen) == 2 and seen[1]["role"] == "assistant"


async def test_past_the_most_held_polls_of_a_client_a_poll_is_refused(http, monkeypatch):
    """Each commit wakes every held poll of its client to read again: a client may not
    make its every commit cost thousands of queries by holding thousands of polls."""
    monkeypatch.setattr(HistoryWatch, "MOST_HELD_PER_CLIENT", 3)
    _, token = await client_with_token(http)
    start = (await (await history(http, token)).json())["next_cursor"]
    held = [asyncio.ensure_future(history(http, token, after=start, wait=20)) for _ in range(3)]
    await asyncio.sleep(0.3)
    assert not any(poll.done() for poll in held)
    refused = await history(http, token, after=start, wait=20)
    await assert_error(refused, 429, "too_many_polls")
    assert refused.headers["Retry-After"] == "1"
    # A page asked for without wait holds nothing and counts for nothing.
    assert (await history(http, token, after=start)).status == 200
    # Another client's polls are held as ever.
    _, other = await client_with_token(http)
    theirs = asyncio.ensure_future(history(http, other, wait=20, after=start))
    await asyncio.sleep(0.3)
    assert not theirs.done()
    await chat(http, token, "wake up")
    async with asyncio.timeout(5):
        pages = [await (await poll).json() for poll in held]
    assert all(page["data"] for page in pages)
    theirs.cancel()


async def test_conversations_are_listed_read_and_erased(http, database_url):
    _, token = await client_with_token(http)
    ids = [(await chat(http, token, f"topic {n}")).headers[CONVERSATION] for n in range(3)]
    listed = await (
        await http.get("/v1/conversations", params={"limit": "2"}, headers=bearer(token))
    ).json()
    assert [c["id"] for c in listed["data"]] == ids[::-1][:2]  # newest first
    assert listed["has_more"] is True
    assert listed["data"][0]["title"] == "topic 2"
    rest = await (
        await http.get(
            "/v1/conversations", params={"after": listed["next_cursor"]}, headers=bearer(token)
        )
    ).json()
    assert [c["id"] for c in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False

    one = await (await http.get(f"/v1/conversations/{ids[1]}", headers=bearer(token))).json()
    assert one["id"] == ids[1] and one["title"] == "topic 1"
    assert [m["role"] for m in one["messages"]] == ["user", "assistant"]
    assert one["has_more"] is False
    assert one["messages"][0]["content"] == "topic 1"

    response = await http.delete(f"/v1/conversations/{ids[1]}", headers=bearer(token))
    assert response.status == 204
    # Gone from the database, not flagged.
    assert (
        await query(database_url, "SELECT id FROM messages WHERE conversation_id = %s", (ids[1],))
        == []
    )
    assert await query(database_url, "SELECT id FROM conversations WHERE id = %s", (ids[1],)) == []
    for method in (http.get, http.delete):
        await assert_error(
            await method(f"/v1/conversations/{ids[1]}", headers=bearer(token)),
            404,
            "conversation_not_found",
        )
    # Continuing an erased conversation is refused too.
    await assert_error(await chat(http, token, conversation=ids[1]), 404)


async def test_a_conversation_longer_than_is_returned_says_so(http, monkeypatch):
    # Only its latest messages come with it (1000); an app must know the rest exist.
    monkeypatch.setattr(conversations, "MAX_MESSAGES", 3)
    _, token = await client_with_token(http)
    first = await chat(http, token, "one")
    conversation = first.headers[CONVERSATION]
    await chat(http, token, "two", conversation=conversation)  # 4 messages now
    got = await (await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))).json()
    # The latest 3 of its 4, oldest first: the first question is left out.
    assert [m["role"] for m in got["messages"]] == ["assistant", "user", "assistant"]
    assert got["messages"][1]["content"] == "two"
    assert got["has_more"] is True


async def test_a_conversation_erased_while_an_answer_streams_stays_erased(
    http, database_url, simulator
):
    _, token = await client_with_token(http)
    conversation = (await chat(http, token, "first")).headers[CONVERSATION]
    simulator.config.tokens = 40
    simulator.config.token_delay = 0.02
    response = await chat(http, token, "second", conversation=conversation, stream=True)
    first = await response.content.readany()  # streaming has begun
    erased = await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert erased.status == 204
    raw = first + await response.read()
    # Not saved, so not confirmed: an error event instead of [DONE], saying why.
    assert b"data: [DONE]" not in raw and b'"conversation_deleted"' in raw
    assert not await query(
        database_url, "SELECT id FROM messages WHERE conversation_id = %s", (conversation,)
    )
    await assert_error(
        await http.get(f"/v1/conversations/{conversation}", headers=bearer(token)), 404
    )
    # The x-receipt-id it was given names a receipt of exactly what it received.
    signed = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert signed["status"] == "failed"
    assert signed["response_sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/chat"])
async def test_a_conversation_erased_while_its_answer_commits_stays_erased(
    http, database_url, endpoint
):
    """The DELETE is still committing when the answer's batch arrives: the batch waits
    for it, then finds the conversation gone, and must not create it again."""
    _, token = await client_with_token(http)
    conversation = (await chat(http, token, "first")).headers[CONVERSATION]
    if endpoint == "/v1/chat":
        body = {"message": "second", "conversation_id": conversation, "model": "gpt-sim"}
        asked = http.post("/v1/chat", json=body, headers=bearer(token))
    else:
        asked = chat(http, token, "second", conversation=conversation)
    eraser = await connect(database_url, timeout=10)
    try:
        async with eraser.cursor() as cur:
            await cur.execute("BEGIN; DELETE FROM conversations WHERE id = %s", (conversation,))
            answer = asyncio.create_task(asked)
            await waiting_for_lock(database_url)  # the batch waits for the DELETE
            await cur.execute("COMMIT")
        refused = await answer
        received = await refused.read()
        await assert_error(refused, 409, "conversation_deleted")
        assert refused.headers["x-should-retry"] == "false"  # it would only meet a 404
    finally:
        await eraser.close()
    signed = await fetch_receipt(http, token, refused.headers["x-receipt-id"])
    assert signed["status"] == "failed"
    assert signed["response_sha256"] == hashlib.sha256(received).hexdigest()
    assert not await query(
        database_url, "SELECT id FROM conversations WHERE id = %s", (conversation,)
    )
    assert not await query(
        database_url, "SELECT id FROM messages WHERE conversation_id = %s", (conversation,)
    )


async def test_search_ranks_matches_and_marks_them(http):
    _, token = await client_with_token(http)
    await chat(http, token, "How do penguins keep warm in Antarctica?")
    second = (await chat(http, token, "Penguins and penguins: a penguin colony")).headers[
        CONVERSATION
    ]
    await chat(http, token, "Something else entirely")
    response = await http.get("/v1/history/search", params={"q": "penguin"}, headers=bearer(token))
    assert response.status == 200
    found = (await response.json())["data"]
    assert [m["content"] for m in found] == [
        "Penguins and penguins: a penguin colony",
        "How do penguins keep warm in Antarctica?",
    ]
    assert "<mark>" in found[0]["snippet"]
    assert found[0]["rank"] >= found[1]["rank"]
    only = await (
        await http.get(
            "/v1/history/search",
            params={"q": '"penguin colony" -warm', "conversation_id": second},
            headers=bearer(token),
        )
    ).json()
    assert [m["conversation_id"] for m in only["data"]] == [second]


HOSTILE = [
    '"',
    '"unterminated',
    "a & | ! <-> :* ()",
    "-",
    "or or or",
    "'; DROP TABLE messages; --",
    "penguin') OR 1=1 --",
    "\\",
    "%",
    "\u0000penguin\u0000",
    "x" * 999,
    "\udcff",
    "\U0001f427 émoji",
    "a:*b & !c",
    # What PostgreSQL's parser reads as markup (relay reads each "<" as a space).
    "<",
    "<<<<",
    "<>",
    "</",
    "<!--",
    "<?xml",
    "<script>alert(1)</script>",
    "a <-> b",
    "<->",
    '"<" or "<"',
    "-<b>",
    "<\x01\x02\x03>",
    "<" * 999,
    "<a " * 32,
    '<div class="',
]


@pytest.mark.parametrize("q", HOSTILE)
async def test_hostile_search_queries_get_results_or_400(http, q):
    _, token = await client_with_token(http)
    await chat(http, token, "penguin facts: Vec<String> <b>bold</b> a<b")
    response = await http.get("/v1/history/search", params={"q": q}, headers=bearer(token))
    assert response.status in (200, 400), await response.text()
    if response.status == 200:
        assert isinstance((await response.json())["data"], list)


async def test_an_empty_conversation_filter_on_search_is_400(http):
    _, token = await client_with_token(http)
    params = {"q": "anything", "conversation_id": ""}
    response = await http.get("/v1/history/search", params=params, headers=bearer(token))
    assert (await assert_error(response, 400))["param"] == "conversation_id"


@pytest.mark.parametrize("q", ["", "   ", "y" * 1001, "z" * 10_000, "w " * 33])
async def test_empty_or_huge_search_queries_are_400(http, q):
    _, token = await client_with_token(http)
    response = await http.get("/v1/history/search", params={"q": q}, headers=bearer(token))
    assert response.status == 400


async def test_a_query_repeating_its_words_marks_them_once_each(http):
    # The same word many times over, against a long message of it: the snippet is
    # marked by the query's distinct words, which keeps PostgreSQL's headline cheap.
    _, token = await client_with_token(http)
    await chat(http, token, "penguin " * 1200)
    params = {"q": "penguin " * 32}
    response = await http.get("/v1/history/search", params=params, headers=bearer(token))
    found = (await response.json())["data"]
    assert len(found) == 1 and found[0]["snippet"].startswith("<mark>penguin</mark>")
    params = {"q": "penguin " * 33}
    response = await http.get("/v1/history/search", params=params, headers=bearer(token))
    assert (await assert_error(response, 400, "invalid_request"))["param"] == "q"


async def test_snippets_are_html_with_the_text_escaped(http):
    # Apps render snippets as HTML (that is what <mark> is for): markup in a message,
    # which a provider's answer may carry, must arrive as text, and no mark be forged.
    _, token = await client_with_token(http)
    text = 'penguin says 3 < 4 & "hi" \x01forged\x02 <img src=x onerror=alert(1)'
    await chat(http, token, text + " Vec<String> <b>bold</b>")
    response = await http.get("/v1/history/search", params={"q": "penguin"}, headers=bearer(token))
    assert response.status == 200
    [found] = (await response.json())["data"]
    snippet = found["snippet"]
    assert snippet.startswith("<mark>penguin</mark> says 3 &lt; 4 &amp; &quot;hi&quot; forged")
    # What PostgreSQL's parser takes for tags shows as text too, not left out.
    assert "forged &lt;img src=x onerror=alert(1) Vec&lt;String&gt; &lt;b&gt;bold" in snippet
    text = snippet.replace("<mark>", "").replace("</mark>", "")
    assert not any(char in text for char in '<>"')
    assert found["content"].startswith('penguin says 3 < 4 & "hi"')  # content is as sent


@pytest.mark.parametrize("raw", ["%00", "%ED%A0%80", "%FF%FE", "%C3%28", "penguin%00%00"])
async def test_undecodable_search_queries_get_results_or_400(http, raw):
    from yarl import URL

    _, token = await client_with_token(http)
    await chat(http, token, "penguin facts")
    url = URL(f"/v1/history/search?q={raw}", encoded=True)
    response = await http.get(url, headers=bearer(token))
    assert response.status in (200, 400), await response.text()


async def test_a_graceful_stop_answers_a_held_long_poll_at_once(http):
    _, token = await client_with_token(http)
    start = await (await history(http, token)).json()
    poll = asyncio.ensure_future(history(http, token, after=start["next_cursor"], wait=30))
    await asyncio.sleep(0.2)
    http.app[IN_FLIGHT].draining.set()
    async with asyncio.timeout(5):
        page = await (await poll).json()
    assert page["data"] == []
