"""RELAY_HISTORY_RETENTION_DAYS: older messages (and conversations) are purged in the background."""

import asyncio
import datetime

import pytest

from relay.config import ConfigError, Settings
from relay.errors import DependencyUnavailableError
from relay.services.retention import HistoryRetention, retry_delay
from relay.services.turns import title_from
from relay.stores.database import Database, connect
from relay.stores.message_purge import MessagePurge
from tests.api_calls import bearer, client_with_token
from tests.history_calls import CONVERSATION, chat, execute, query, waiting_for_lock


async def age(database_url: str, conversation: str, days: int) -> None:
    """Make a conversation and its messages look `days` old."""
    await execute(
        database_url,
        "UPDATE messages SET created_at = now() - make_interval(days => %s)"
        " WHERE conversation_id = %s",
        (days, conversation),
    )
    await execute(
        database_url,
        "UPDATE conversations SET created_at = now() - make_interval(days => %s),"
        " updated_at = now() - make_interval(days => %s) WHERE id = %s",
        (days, days, conversation),
    )


async def test_purge_deletes_only_what_is_older_than_the_retention(http, database_url):
    _, token = await client_with_token(http)
    old = (await chat(http, token, "old")).headers[CONVERSATION]
    recent = (await chat(http, token, "recent")).headers[CONVERSATION]
    # A conversation with old messages and a new one: only the old messages go.
    mixed = (await chat(http, token, "mixed, old part")).headers[CONVERSATION]
    await age(database_url, old, 40)
    await age(database_url, mixed, 40)
    await chat(http, token, "mixed, new part", conversation=mixed)
    db = await Database.open(database_url, size=2, timeout=5)
    try:
        # A batch of 1 exercises the loop that deletes in batches.
        deleted = await HistoryRetention(MessagePurge(db), 30, batch=1).purge_once()
    finally:
        await db.close()
    assert deleted == 4
    conversations = {
        str(row["id"]) for row in await query(database_url, "SELECT id FROM conversations")
    }
    assert conversations == {recent, mixed}
    left = await query(
        database_url, "SELECT content FROM messages WHERE role = 'user' ORDER BY seq"
    )
    assert [row["content"] for row in left] == ["recent", "mixed, new part"]
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert len(page["data"]) == 4
    # A title is the first question: content too, purged with it. The conversation
    # kept for its newer messages is titled by the oldest question left.
    listed = await (await http.get("/v1/conversations", headers=bearer(token))).json()
    titles = {row["id"]: row["title"] for row in listed["data"]}
    assert titles == {recent: "recent", mixed: "mixed, new part"}


async def test_purge_keeps_a_conversation_continued_while_it_ran(http, database_url):
    _, token = await client_with_token(http)
    old = (await chat(http, token, "old")).headers[CONVERSATION]
    await age(database_url, old, 40)
    # A commit continuing the conversation holds its row while the purge reaches it.
    writer = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=2, timeout=5)
    try:
        async with writer.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute("UPDATE conversations SET updated_at = now() WHERE id = %s", (old,))
            purge = asyncio.ensure_future(HistoryRetention(MessagePurge(db), 30).purge_once())
            await asyncio.sleep(0.5)  # the purge waits for the row
            assert not purge.done()
            await cur.execute("COMMIT")
        await purge
    finally:
        await writer.close()
        await db.close()
    assert await query(database_url, "SELECT id FROM conversations WHERE id = %s", (old,))


@pytest.mark.parametrize("commit_first", [True, False], ids=["commit-first", "purge-first"])
async def test_a_conversation_continued_while_it_is_retitled_is_titled_by_its_new_question(
    http, database_url, commit_first
):
    """A conversation whose every question is purged is retitled '' (its title went with
    them) while a commit continues it with a new question. Whichever of the two takes
    the conversation's row first, the new question is its title at the end: the commit
    lands after the purge read that no question is left, either before the purge writes
    '' (commit first) or after (purge first)."""
    _, token = await client_with_token(http)
    old = (await chat(http, token, "old question")).headers[CONVERSATION]
    await age(database_url, old, 40)
    holder = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=2, timeout=5)

    def continuing() -> asyncio.Future:
        return asyncio.ensure_future(chat(http, token, "new question", conversation=old))

    def purging() -> asyncio.Future:
        return asyncio.ensure_future(HistoryRetention(MessagePurge(db), 30).purge_once())

    # Purge first, the purge's next statements could also beat the woken commit to the
    # row, and erase the conversation before it is continued (its client then gets a
    # 409): the old messages are held too, so the purge waits at their deletion.
    messages_holder = await connect(database_url, timeout=10)
    try:
        async with holder.cursor() as held, messages_holder.cursor() as held_messages:
            # Held as a commit continuing the conversation holds it: the two queue for it.
            await held.execute("BEGIN")
            await held.execute("SELECT FROM conversations WHERE id = %s FOR UPDATE", (old,))
            await held_messages.execute("BEGIN")
            await held_messages.execute(
                "SELECT FROM messages WHERE conversation_id = %s FOR UPDATE", (old,)
            )
            first = continuing() if commit_first else purging()
            await waiting_for_lock(database_url)
            second = purging() if commit_first else continuing()
            await waiting_for_lock(database_url, 2)
            await held.execute("COMMIT")
            await (first if commit_first else second)  # the answer, committed
            await held_messages.execute("COMMIT")
            done = await asyncio.gather(first, second)
    finally:
        await holder.close()
        await messages_holder.close()
        await db.close()
    answer, deleted = done if commit_first else done[::-1]
    assert answer.status == 200
    assert deleted == 2
    rows = await query(database_url, "SELECT id, title FROM conversations")
    assert [(str(row["id"]), row["title"]) for row in rows] == [(old, "new question")]
    left = await query(database_url, "SELECT content FROM messages WHERE role = 'user'")
    assert [row["content"] for row in left] == ["new question"]


async def test_a_purge_that_fails_midway_leaves_no_purged_question_as_a_title(http, database_url):
    """A purge the database fails part way (a statement cancelled, the connection lost,
    relay stopped) is only retried at the next one: which must still find, and title
    anew, the conversations whose first question the failed one purged."""
    _, token = await client_with_token(http)
    mixed = (await chat(http, token, "old question")).headers[CONVERSATION]
    await age(database_url, mixed, 40)
    await chat(http, token, "new question", conversation=mixed)
    # A commit continuing the conversation holds its row while the purge reaches it,
    # and the server cancels the purge's statement waiting for it.
    writer = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=2, timeout=5)
    retention = HistoryRetention(MessagePurge(db), 30)
    try:
        async with writer.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute("SELECT FROM conversations WHERE id = %s FOR UPDATE", (mixed,))
            purge = asyncio.ensure_future(retention.purge_once())
            (pid,) = await waiting_for_lock(database_url)
            await query(database_url, "SELECT pg_cancel_backend(%s)", (pid,))
            with pytest.raises(DependencyUnavailableError):
                await purge
            await cur.execute("COMMIT")
        await retention.purge_once()  # the next hour's
    finally:
        await writer.close()
        await db.close()
    listed = await (await http.get("/v1/conversations", headers=bearer(token))).json()
    assert [(row["id"], row["title"]) for row in listed["data"]] == [(mixed, "new question")]
    left = await query(database_url, "SELECT content FROM messages WHERE role = 'user'")
    assert [row["content"] for row in left] == ["new question"]


async def test_a_failed_purge_is_tried_again_soon_not_at_the_next_interval(
    http, database_url, caplog
):
    _, token = await client_with_token(http)
    old = (await chat(http, token, "old")).headers[CONVERSATION]
    await age(database_url, old, 40)
    holder = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=2, timeout=5)
    retention = HistoryRetention(MessagePurge(db), 30, interval_s=3600, retry_s=0.05)
    run = asyncio.ensure_future(retention.run())
    try:
        async with holder.cursor() as cur:
            # The first run fails: its statement, kept waiting, cancelled by the server.
            await cur.execute("BEGIN")
            await cur.execute("SELECT FROM conversations WHERE id = %s FOR UPDATE", (old,))
            (pid,) = await waiting_for_lock(database_url)
            await query(database_url, "SELECT pg_cancel_backend(%s)", (pid,))
            for _ in range(200):
                if any(r.message == "history purge failed" for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
            await cur.execute("COMMIT")
        for _ in range(200):
            if not await query(database_url, "SELECT 1 FROM conversations WHERE id = %s", (old,)):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the failed purge was not tried again")
    finally:
        run.cancel()
        await holder.close()
        await db.close()
    [failed] = [r for r in caplog.records if r.message == "history purge failed"]
    assert (failed.error, failed.failures, failed.retry_s) == (
        "DependencyUnavailableError",
        1,
        0.05,
    )


def test_failed_purges_back_off_up_to_the_interval():
    delays = [retry_delay(failures, 30, 3600) for failures in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10**6, 30, 3600) == 3600


async def test_retitling_locks_conversations_in_id_order(http, database_url):
    """A group commit continuing conversations locks them in id order; retitling them
    must too, or a purge and a commit each holding one the other waits for deadlock
    (PostgreSQL then fails one of them after a second)."""
    _, token = await client_with_token(http)
    ids = sorted([(await chat(http, token, f"q{n}")).headers[CONVERSATION] for n in range(2)])
    low, high = ids
    # The lowest id's row rewritten, a scan of the table meets the highest first.
    await execute(database_url, "UPDATE conversations SET title = title WHERE id = %s", (low,))
    holder = await connect(database_url, timeout=10)
    other = await connect(database_url, timeout=10)
    db = await Database.open(database_url, size=2, timeout=5)
    try:
        async with holder.cursor() as held, other.cursor() as cur:
            await held.execute("BEGIN")
            await held.execute("SELECT FROM conversations WHERE id = %s FOR UPDATE", (low,))
            # Named highest id first: retitling must still take the lowest first.
            since = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
            retitle = asyncio.ensure_future(
                MessagePurge(db).retitle([high, low], since=since, title=lambda q: f"new {q}")
            )
            await waiting_for_lock(database_url)
            # Waiting for the lowest, it holds nothing yet: the highest is free.
            await cur.execute("SET lock_timeout = '100ms'")
            await cur.execute("SELECT FROM conversations WHERE id = %s FOR UPDATE", (high,))
            await held.execute("COMMIT")
            assert await retitle == 2
    finally:
        await holder.close()
        await other.close()
        await db.close()


async def test_relay_purges_in_the_background_when_retention_is_set(
    make_client, make_settings, database_url
):
    http = await make_client(make_settings())
    _, token = await client_with_token(http)
    old = (await chat(http, token, "old")).headers[CONVERSATION]
    await chat(http, token, "recent")
    await age(database_url, old, 10)
    # A second instance with retention on purges at start-up (and hourly after).
    await make_client(make_settings(history_retention_days=7))
    for _ in range(100):
        if not await query(database_url, "SELECT 1 FROM conversations WHERE id = %s", (old,)):
            break
        await asyncio.sleep(0.05)
    contents = await query(database_url, "SELECT content FROM messages WHERE role = 'user'")
    assert [row["content"] for row in contents] == ["recent"]


def test_retention_is_off_unless_set_and_must_be_positive():
    assert Settings.from_env({}).history_retention_days is None
    assert Settings.from_env({"RELAY_HISTORY_RETENTION_DAYS": ""}).history_retention_days is None
    assert Settings.from_env({"RELAY_HISTORY_RETENTION_DAYS": "30"}).history_retention_days == 30
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="RELAY_HISTORY_RETENTION_DAYS"):
            Settings.from_env({"RELAY_HISTORY_RETENTION_DAYS": bad})


async def test_a_message_of_only_blanks_is_no_question_to_title_a_conversation_by(
    http, database_url
):
    _, token = await client_with_token(http)
    mixed = (await chat(http, token, "old question")).headers[CONVERSATION]
    await age(database_url, mixed, 40)
    for blank in ("\n\t\r", "\u3000\u00a0\x1c"):
        await chat(http, token, blank, conversation=mixed)
    await chat(http, token, "new question", conversation=mixed)
    db = await Database.open(database_url, size=2, timeout=5)
    try:
        await HistoryRetention(MessagePurge(db), 30).purge_once()
    finally:
        await db.close()
    listed = await (await http.get("/v1/conversations", headers=bearer(token))).json()
    assert [(row["id"], row["title"]) for row in listed["data"]] == [(mixed, "new question")]


async def test_a_title_is_made_of_the_opening_of_a_long_first_question(http, database_url):
    _, token = await client_with_token(http)
    long_question = "\n\t  Why  is" + " " * 3000 + "\nthe sky blue? " + "Because " * 20_000
    conversation = (await chat(http, token, long_question)).headers[CONVERSATION]
    db = await Database.open(database_url, size=2, timeout=5)
    try:
        store = MessagePurge(db)
        since = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        [question] = (await store.first_questions([conversation], since=since)).values()
    finally:
        await db.close()
    # Only the opening comes back to relay, its whitespace runs made one space each.
    assert question == (" " + " ".join(long_question.split()))[:2000]
    assert title_from(question) == title_from(long_question)
