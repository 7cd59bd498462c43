"""Batches of receipts sent while the one before still commits: the database keeps the chain."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import aiopg
import orjson
import pytest

import relay.services.receipts as receipts_module
from relay.appkeys import ANSWER_RECORDER, DATABASE
from relay.errors import DependencyUnavailableError
from relay.proofs.verify import verify_chain
from relay.services.answers import Answer
from relay.stores.clients import Client, ClientStore
from relay.stores.database import Batch, Database, QueryError
from relay.stores.receipts import ChainHead, ReceiptRow, append_receipts, lock_chain_head
from tests.api_calls import client_with_token
from tests.history_calls import execute, query, recorded_answer


def rows_after(head: ChainHead, count: int) -> list[ReceiptRow]:
    """Stand-in rows (the store does not read bodies), linked from `head`."""
    rows, seq, prev = [], head.seq, head.sha256
    for _ in range(count):
        body = uuid.uuid4().hex
        sha = hashlib.sha256(body.encode()).hexdigest()
        seq += 1
        rows.append(ReceiptRow(uuid.uuid4().hex, seq, None, body, sha, prev))  # no client: NULL
        prev = sha
    return rows


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
async def test_a_batch_chained_on_one_still_committing_waits_for_its_outcome(
    database_url, first_commits
):
    db = await Database.open(database_url, size=2, timeout=10)
    try:
        async with db.cursor() as one, db.cursor() as two:
            first = Batch(one)
            head = await lock_chain_head(first)
            first_rows = rows_after(head, 2)
            after_first = append_receipts(first, head, first_rows)
            await first.flush()  # its rows are in, its transaction still open

            second = Batch(two)
            second_rows = rows_after(after_first, 3)
            append_receipts(second, after_first, second_rows)
            committing = asyncio.ensure_future(second.commit())
            await asyncio.sleep(0.3)
            assert not committing.done(), "the second batch must wait for the first"

            if first_commits:
                await first.commit()
                await committing
                expected = first_rows + second_rows
            else:
                await first.rollback()
                with pytest.raises(QueryError):
                    await committing
                await second.rollback()
                expected = []
    finally:
        await db.close()
    stored = await query(database_url, "SELECT id, seq, prev_sha256 FROM receipts ORDER BY seq")
    assert [(row["id"], row["seq"], row["prev_sha256"]) for row in stored] == [
        (row.id, row.seq, row.prev_sha256) for row in expected
    ]


async def owner_of_a_lost_answer(http, database_url: str, delay: float = 0.0) -> Client:
    """A new client whose answers with request id 'lost' PostgreSQL refuses to store,
    after `delay` seconds (holding the chain head meanwhile)."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    assert owner is not None
    await execute(
        database_url,
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
        f" PERFORM pg_sleep({delay}); RAISE EXCEPTION 'history write refused'; END;"
        " $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW"
        " WHEN (NEW.request_id = 'lost') EXECUTE FUNCTION refuse();",
    )
    return owner


async def test_answers_sent_behind_a_failing_batch_are_recorded_and_the_chain_has_no_gap(
    http, database_url
):
    """The first batch holds the chain head a while, then fails (its history write is
    refused); the batch sent behind it, chained on it, fails with it, is tried
    again, and commits."""
    owner = await owner_of_a_lost_answer(http, database_url, delay=0.5)
    recorder = http.app[ANSWER_RECORDER]
    sent: list[list[str]] = []
    first_sent = asyncio.Event()
    write = recorder._write

    async def recorded_write(answers, **options):
        sent.append([answer.request_id for answer in answers])
        first_sent.set()
        await write(answers, **options)

    recorder._write = recorded_write

    async def record(answer: Answer) -> str:
        await recorder.record(answer)
        return answer.request_id

    lost = asyncio.ensure_future(record(recorded_answer(http.app, owner, "lost")))
    await first_sent.wait()  # the writer sent it as a batch of its own
    kept = [
        asyncio.ensure_future(record(recorded_answer(http.app, owner, f"kept {n}")))
        for n in range(5)
    ]
    outcomes = await asyncio.gather(lost, *kept, return_exceptions=True)

    assert isinstance(outcomes[0], DependencyUnavailableError)
    assert outcomes[1:] == [f"kept {n}" for n in range(5)]
    kept_batch = sorted(f"kept {n}" for n in range(5))
    assert [sorted(batch) for batch in sent].count(kept_batch) >= 2, "kept was sent, then again"
    stored = await query(database_url, "SELECT seq, body FROM receipts ORDER BY seq")
    assert [row["seq"] for row in stored] == list(range(1, 6))
    assert verify_chain([orjson.loads(row["body"]) for row in stored])
    messages = await query(database_url, "SELECT request_id FROM messages ORDER BY seq")
    assert {row["request_id"] for row in messages} == set(kept_batch)


def count_head_reads(monkeypatch: pytest.MonkeyPatch) -> list[ChainHead]:
    """The heads receipts read under the row lock from now on (after a failure, or
    when another instance signs too), in a list that grows as they are read."""
    reads: list[ChainHead] = []
    locked_read = receipts_module.lock_chain_head

    async def counted_read(tx: Batch) -> ChainHead:
        reads.append(await locked_read(tx))
        return reads[-1]

    monkeypatch.setattr(receipts_module, "lock_chain_head", counted_read)
    return reads


async def test_a_batch_that_overtakes_the_one_it_chains_on_is_tried_again_without_a_gap(
    http, database_url, monkeypatch
):
    """Two batches on two connections: the first is slow to reach PostgreSQL (its
    backend scheduled late, say), the second, built on the head the first leaves,
    runs first. It finds the head it was built on not yet there and fails; tried
    again (on the head read under lock), it commits after the first, and the chain
    has no gap and no fork."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    assert owner is not None
    recorder = http.app[ANSWER_RECORDER]
    await recorder.record(recorded_answer(http.app, owner, "warm"))  # the head is known
    head_reads = count_head_reads(monkeypatch)
    first_on_its_way = asyncio.Event()
    execute_now = aiopg.Cursor.execute

    async def slow_first(cursor, operation, *args, **kwargs):
        # The batch's receipts go as EXECUTE of the prepared insert (first PREPAREd).
        if "relay_receipts_insert" in operation and not first_on_its_way.is_set():
            first_on_its_way.set()
            await asyncio.sleep(0.3)
        return await execute_now(cursor, operation, *args, **kwargs)

    monkeypatch.setattr(aiopg.Cursor, "execute", slow_first)
    first = asyncio.ensure_future(recorder.record(recorded_answer(http.app, owner, "first")))
    await first_on_its_way.wait()
    await recorder.record(recorded_answer(http.app, owner, "second"))
    await first

    assert len(head_reads) == 1, "the second, overtaking the first, failed and read the head"
    stored = await query(database_url, "SELECT body FROM receipts ORDER BY seq")
    bodies = [orjson.loads(row["body"]) for row in stored]
    assert [body["request_sha256"] for body in bodies] == [
        hashlib.sha256(text.encode()).hexdigest() for text in ("warm", "first", "second")
    ]
    assert verify_chain(bodies)


async def test_after_a_failed_batch_the_next_ones_read_the_head_under_lock(
    http, database_url, monkeypatch
):
    """Batches chained on heads that are not yet committed fail with the one they
    chain on; so for a while after a failure every batch reads the committed head
    (under its lock) instead, and then goes back to chaining on the head it keeps."""
    owner = await owner_of_a_lost_answer(http, database_url)
    head_reads = count_head_reads(monkeypatch)
    monkeypatch.setattr(receipts_module.ReceiptsPart, "SETTLE_SECONDS", 0.5)
    recorder = http.app[ANSWER_RECORDER]

    async def record(text: str) -> int:
        before = len(head_reads)
        await recorder.record(recorded_answer(http.app, owner, text))
        return len(head_reads) - before

    await record("first")
    assert await record("second") == 0  # chained on the head this instance keeps
    with pytest.raises(DependencyUnavailableError):
        await record("lost")
    assert [await record(f"after {n}") for n in range(3)] == [1, 1, 1]
    await asyncio.sleep(0.6)
    assert await record("settled") == 0
    stored = await query(database_url, "SELECT body FROM receipts ORDER BY seq")
    assert verify_chain([orjson.loads(row["body"]) for row in stored])
