"""Deleting a client, while its answers commit or its conversation is deleted, deadlocks
nothing: every transaction takes the client's row before its sequence and conversations,
as the deletion does (it locks the row, then cascades)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from relay.appkeys import DATABASE
from relay.ids import uuid7_text
from relay.stores.conversations import ConversationStore
from relay.stores.database import connect
from relay.stores.history import NewMessage, Turn, write_turns
from tests.api_calls import client_with_token
from tests.history_calls import CONVERSATION, chat, query, waiting_for_lock


async def deletion_against(
    database_url: str, client_id: str, hold: str, args: tuple[Any, ...], work: Awaitable[Any]
) -> tuple[object, object]:
    """Hold a row lock (`hold`), start `work` (it waits for that lock), then delete the
    client (it waits too), then let go: both must end without a deadlock."""
    holder = await connect(database_url, timeout=10)
    deleter = await connect(database_url, timeout=10)
    try:
        async with holder.cursor() as held, deleter.cursor() as cur:
            await held.execute("BEGIN; " + hold, args)
            working = asyncio.ensure_future(work)
            await waiting_for_lock(database_url)

            async def delete_client() -> None:
                await cur.execute("DELETE FROM clients WHERE id = %s", (client_id,))

            deleting = asyncio.ensure_future(delete_client())
            for _ in range(300):  # both wait now
                if len(await waiting_for_lock(database_url)) >= 2 or deleting.done():
                    break
                await asyncio.sleep(0.01)
            await held.execute("COMMIT")
            outcomes = await asyncio.gather(working, deleting, return_exceptions=True)
    finally:
        await holder.close()
        await deleter.close()
    return outcomes[0], outcomes[1]


def deadlocked(outcome: object) -> bool:
    return "deadlock" in repr(outcome).lower()


async def test_a_batch_and_the_deletion_of_its_client_do_not_deadlock(http, database_url):
    client, token = await client_with_token(http)
    conversation = (await chat(http, token, "first")).headers[CONVERSATION]
    turn = Turn(
        client_id=client["id"],
        conversation_id=conversation,
        continued=True,
        title="",
        model="gpt-sim",
        request_id="second",
        messages=[NewMessage(role="user", content="second")],
    )

    async def commit() -> None:
        async with http.app[DATABASE].batch() as tx:
            write_turns(tx, [turn])

    # The batch waits for the conversation's row (after the client's, with the fix),
    # the deletion for the client's row; before the fix the batch took the client's
    # row only for its messages, after the deletion had it: each waited for the other.
    batch, deletion = await deletion_against(
        database_url,
        client["id"],
        "SELECT FROM conversations WHERE id = %s FOR UPDATE",
        (conversation,),
        commit(),
    )
    assert not deadlocked(batch) and not deadlocked(deletion), (batch, deletion)
    assert batch is None and deletion is None
    assert not await query(database_url, "SELECT id FROM clients WHERE id = %s", (client["id"],))


async def test_a_tombstoning_delete_and_the_deletion_of_its_client_do_not_deadlock(
    http, database_url
):
    client, token = await client_with_token(http)
    await chat(http, token, "first")  # the client's history sequence exists
    store = ConversationStore(http.app[DATABASE])
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    delete: Callable[[], Awaitable[bool]] = lambda: store.delete(  # noqa: E731
        client["id"], uuid7_text(), tombstone_until=until
    )
    # The DELETE waits for the sequence's row (after the client's, with the fix); the
    # deletion takes the client's row, then waits for the sequence's in its cascade.
    erased, deletion = await deletion_against(
        database_url,
        client["id"],
        "SELECT FROM history_sequences WHERE client_id = %s FOR UPDATE",
        (client["id"],),
        delete(),
    )
    assert not deadlocked(erased) and not deadlocked(deletion), (erased, deletion)
    assert erased is False and deletion is None
    assert not await query(
        database_url, "SELECT 1 FROM conversation_tombstones WHERE client_id = %s", (client["id"],)
    )
