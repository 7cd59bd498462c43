"""A poller following next_cursor sees every message exactly once while writers commit concurrently.

Writers here are independent transactions (as several relay instances would
run), each sleeping a random while inside its transaction, so they commit in
an order unrelated to the order they started or drew ids in.
"""

import asyncio
import random
import uuid

import pytest

from relay.stores.database import Database
from relay.stores.history import NewMessage, Turn, write_turns
from tests.api_calls import bearer, client_with_token

WRITERS = 24
TURNS_PER_WRITER = 6


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def write(
    db: Database, client_id: str, conversation_id: str, rng: random.Random
) -> list[int]:
    ids = []
    for _ in range(TURNS_PER_WRITER):
        turn = Turn(
            client_id=client_id,
            conversation_id=conversation_id,
            title="t",
            model="gpt-sim",
            request_id=uuid.uuid4().hex,
            messages=[NewMessage("user", "q"), NewMessage("assistant", "a")],
        )
        async with db.batch() as tx:
            await tx.execute("SELECT pg_sleep(%s)", (rng.random() * 0.02,))
            write_turns(tx, [turn])
            await tx.flush()
            # Holding the transaction open after drawing ids and sequence numbers.
            await asyncio.sleep(rng.random() * 0.03)
        async with db.cursor() as cur:
            await cur.execute("SELECT id FROM messages WHERE request_id = %s", (turn.request_id,))
            ids.extend(row[0] for row in await cur.fetchall())
    return ids


async def follow(http, token: str, writers_done: asyncio.Event) -> list[int]:
    """Poll like an integration would, until the writers are done and nothing is left."""
    seen: list[int] = []
    cursor = None
    async with asyncio.timeout(60):
        while True:
            finished = writers_done.is_set()  # read before the page: nothing commits after
            params = {"limit": "7"}
            if cursor:
                params["after"] = cursor
            response = await http.get("/v1/history", params=params, headers=bearer(token))
            page = await response.json()
            seen.extend(message["id"] for message in page["data"])
            cursor = page["next_cursor"]
            if not page["data"]:
                if finished:
                    return seen
                await asyncio.sleep(0.005)


async def test_every_message_is_seen_exactly_once_under_concurrent_commits(http, database_url):
    rng = random.Random(4)
    clients = [await client_with_token(http, name=f"writer {n}") for n in range(2)]
    db = await Database.open(database_url, size=WRITERS + 2, timeout=10)
    try:
        writers = [
            write(db, clients[n % 2][0]["id"], str(uuid.uuid4()), random.Random(rng.random()))
            for n in range(WRITERS)
        ]
        done = asyncio.Event()

        async def all_writers() -> list[list[int]]:
            try:
                return await asyncio.gather(*writers)
            finally:
                done.set()

        written, *seen = await asyncio.gather(
            all_writers(), *(follow(http, token, done) for _, token in clients)
        )
    finally:
        await db.close()
    for n, seen_ids in enumerate(seen):
        mine = {i for w, ids in enumerate(written) if w % 2 == n for i in ids}
        assert len(seen_ids) == len(set(seen_ids)), "a message was seen twice"
        assert set(seen_ids) == mine, "a message was skipped"
