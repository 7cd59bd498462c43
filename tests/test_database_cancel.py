"""Cancellation: a statement PostgreSQL cancels is a 503, while a task that is itself
cancelled (its client left, relay stopping) stays cancelled; neither loses work.

A statement is made to wait on a table another session holds locked, then the
server cancels it with pg_cancel_backend(), as statement_timeout or a recovery
conflict would.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg2.errors
import pytest

from relay.appkeys import DATABASE
from relay.errors import DependencyUnavailableError
from relay.services.answers import Answer, AnswerHooks
from relay.services.history_part import HistoryPart
from relay.services.recorder import AnswerRecorder
from relay.services.retention import HistoryRetention
from relay.stores.clients import ClientStore
from relay.stores.database import Batch, Database, connect
from relay.stores.message_purge import MessagePurge, Purged
from relay.stores.messages import MessageStore
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import (
    CONVERSATION,
    chat,
    query,
    recorded_answer,
    stored_messages,
    waiting_for_lock,
)

COUNT = "SELECT count(*) FROM messages"


@asynccontextmanager
async def locked(database_url: str, table: str) -> AsyncIterator[None]:
    """`table` locked by another session: every statement on it waits."""
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
            await cur.execute("ROLLBACK")
    finally:
        await conn.close()


async def cancel_waiting_statement(database_url: str) -> None:
    """What statement_timeout would do to the one statement waiting for the lock."""
    (pid,) = await waiting_for_lock(database_url)
    rows = await query(database_url, "SELECT pg_cancel_backend(%s) AS cancelled", (pid,))
    assert rows == [{"cancelled": True}]


async def logged(caplog: pytest.LogCaptureFixture, message: str, times: int = 1) -> None:
    for _ in range(300):
        if [record.getMessage() for record in caplog.records].count(message) >= times:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{message!r} was not logged {times} times")


async def read_in_cursor(db: Database) -> None:
    async with db.cursor() as cur:
        await cur.execute(COUNT)


async def read_in_transaction(db: Database) -> None:
    async with db.transaction() as cur:
        await cur.execute(COUNT)


async def read_in_batch(db: Database) -> None:
    async with db.batch() as tx:
        await tx.execute(COUNT)


async def write_at_batch_commit(db: Database) -> None:
    async with db.batch() as tx:
        await tx.execute("SELECT 1")  # the transaction is open: its COMMIT is what waits
        tx.defer("DELETE FROM messages")


@pytest.mark.parametrize(
    "statement", [read_in_cursor, read_in_transaction, read_in_batch, write_at_batch_commit]
)
async def test_a_statement_the_server_cancels_is_the_database_being_unavailable(
    database_url: str,
    statement: Callable[[Database], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One connection: what the cancel leaves behind is what the next user gets.
    db = await Database.open(database_url, size=1, timeout=10)
    try:
        async with locked(database_url, "messages"):
            task = asyncio.create_task(statement(db))
            await cancel_waiting_statement(database_url)
            with pytest.raises(DependencyUnavailableError):
                await task
        await read_in_cursor(db)  # the connection is usable, outside any transaction
    finally:
        await db.close()
    # Logged as what it is: a cancelled statement, not an outage.
    cancelled = [r for r in caplog.records if r.getMessage() == "postgres cancelled a statement"]
    assert [record.__dict__["error"] for record in cancelled] == ["QueryCanceled"]
    assert not [r for r in caplog.records if r.getMessage() == "postgres unavailable"]


async def test_a_task_cancelled_during_a_statement_stays_cancelled(database_url: str) -> None:
    db = await Database.open(database_url, size=1, timeout=10)
    try:
        async with locked(database_url, "messages"):
            task = asyncio.create_task(read_in_cursor(db))
            await waiting_for_lock(database_url)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await read_in_cursor(db)  # the pool replaced the connection aiopg closed
    finally:
        await db.close()


async def test_a_history_read_the_server_cancels_is_a_503(http, database_url):
    _, token = await client_with_token(http)
    async with locked(database_url, "messages"):
        response = asyncio.ensure_future(http.get("/v1/history", headers=bearer(token)))
        await cancel_waiting_statement(database_url)
        await assert_error(await response, 503, "dependency_unavailable")
    assert (await http.get("/v1/history", headers=bearer(token))).status == 200


async def test_a_chat_lookup_the_server_cancels_is_a_503_not_a_client_leaving(http, database_url):
    client, token = await client_with_token(http)
    conversation = (await chat(http, token, "first")).headers[CONVERSATION]
    async with locked(database_url, "conversations"):
        # Continuing a conversation looks it up before anything is forwarded.
        response = asyncio.ensure_future(chat(http, token, "second", conversation=conversation))
        await cancel_waiting_statement(database_url)
    response = await response
    await assert_error(response, 503, "dependency_unavailable")
    assert response.headers["Retry-After"] == "1"
    statuses = [row["status"] for row in await stored_messages(database_url, client["id"])]
    assert "cancelled" not in statuses


async def test_retention_keeps_purging_after_a_purge_the_server_cancels(database_url, caplog):
    db = await Database.open(database_url, size=1, timeout=10)
    retention = HistoryRetention(MessagePurge(db), 30, interval_s=0.05)
    try:
        async with locked(database_url, "messages"):
            loop = asyncio.create_task(retention.run())
            await cancel_waiting_statement(database_url)
            await logged(caplog, "history purge failed")
            # The next interval's purge: the loop outlived the cancelled statement.
            await cancel_waiting_statement(database_url)
            await logged(caplog, "history purge failed", times=2)
        assert not loop.done()
        loop.cancel()  # as relay does when it stops
        with pytest.raises(asyncio.CancelledError):
            await loop
    finally:
        await db.close()


class BuggyOnce(MessagePurge):
    """relay's message purge, whose first run fails with something nobody expected."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.purges = 0
        self.purged_again = asyncio.Event()

    async def purge(
        self, older_than: datetime.datetime, *, batch: int, title: Callable[[str], str]
    ) -> Purged:
        self.purges += 1
        if self.purges == 1:
            raise RuntimeError("a bug")
        purged = await super().purge(older_than, batch=batch, title=title)
        self.purged_again.set()
        return purged


async def test_retention_keeps_purging_after_an_unexpected_error(database_url, caplog):
    db = await Database.open(database_url, size=1, timeout=10)
    messages = BuggyOnce(db)
    retention = HistoryRetention(messages, 30, interval_s=0.01)
    try:
        loop = asyncio.create_task(retention.run())
        async with asyncio.timeout(5):
            await messages.purged_again.wait()
        assert not loop.done()
        failed = [r for r in caplog.records if r.getMessage() == "history purge failed"]
        assert len(failed) == 1 and failed[0].levelno == logging.ERROR and failed[0].exc_info
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    finally:
        await db.close()


async def test_an_answer_whose_caller_left_while_waiting_for_room_is_still_recorded(
    http, database_url
):
    """Its caller was cancelled before the answer was queued; recording it again (as
    /v1/chat does once its client left) must queue it, not take it as queued already."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    recorder = AnswerRecorder(batch_size=1, queue_size=1)
    recorder.add_part(HistoryPart())
    await recorder.start(http.app[DATABASE])
    hooks = AnswerHooks(commit=[recorder.record])
    ahead: list[asyncio.Task[None]] = []
    try:
        async with locked(database_url, "conversations"):
            # The writer stalls on the lock; answers pile up until the queue is full.
            for n in range(20):
                if recorder._queue is not None and recorder._queue.full():
                    break
                answer = recorded_answer(http.app, owner, f"ahead {n}")
                ahead.append(asyncio.create_task(recorder.record(answer)))
                await asyncio.sleep(0.02)
            left = recorded_answer(http.app, owner, "left while waiting")
            waiting = asyncio.create_task(recorder.record(left))
            await asyncio.sleep(0.05)
            assert not waiting.done(), "it waits for room in the queue"
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert not left.recorded
        await hooks.commit_quietly(left)
        await asyncio.gather(*ahead)
    finally:
        await recorder.close()
    questions = [row["content"] for row in await stored_messages(database_url, client["id"])]
    assert "left while waiting" in questions
    assert len(questions) == 2 * (len(ahead) + 1)  # a question and its answer each, once


async def test_a_search_is_stopped_by_the_server_before_relay_gives_up(database_url, caplog):
    """A search (which a costly query can make slow) runs under a server-side timeout
    a little shorter than relay's own: it never runs on in the database after its
    client was told the database is unavailable."""
    pooled = await Database.open(database_url, size=1, timeout=5)
    hurried = Database(pooled.pool, database_url, timeout=0.3)
    client_id = "00000000-0000-4000-8000-000000000000"
    try:
        async with locked(database_url, "messages"):
            with pytest.raises(DependencyUnavailableError):
                await MessageStore(hurried).search(client_id, "x", marked="x", limit=5)
            waiting = await query(
                database_url,
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            assert waiting == []
    finally:
        await pooled.close()
    # Logged once, by relay, as a warning; not again by asyncio, as an error with a traceback.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "postgres unavailable"
    ]


async def test_a_commit_relay_gave_up_on_never_lands_later(database_url):
    """A group commit waits for a lock past relay's timeout: relay fails its answers,
    and the server, seeing relay gone, drops the batch rather than commit it once the
    lock is free (which would save answers whose clients were told they were not)."""
    db = await Database.open(database_url, size=1, timeout=0.3)
    try:
        async with locked(database_url, "receipt_chain_head"):
            with pytest.raises(DependencyUnavailableError):
                async with db.batch() as tx:
                    tx.defer("UPDATE receipt_chain_head SET sha256 = 'landed-late'")
            await asyncio.sleep(0.5)  # the lock outlives relay's wait by far
        await asyncio.sleep(0.2)
        rows = await query(database_url, "SELECT sha256 FROM receipt_chain_head")
        assert [row["sha256"] for row in rows] != ["landed-late"]
    finally:
        await db.close()


async def test_answers_queued_behind_an_unreachable_database_fail_with_its_batch(
    http, database_url
):
    """A batch that finds the database out of reach fails what queued behind it too,
    rather than send it batch after batch, each failing a timeout later."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    hurried = await Database.open(database_url, size=2, timeout=0.3)
    sent = 0
    batch = hurried.batch

    def counted_batch() -> Any:
        nonlocal sent
        sent += 1
        return batch()

    hurried.batch = counted_batch  # type: ignore[method-assign]
    recorder = AnswerRecorder(batch_size=1)
    recorder.add_part(HistoryPart())
    await recorder.start(hurried)
    try:
        async with locked(database_url, "conversations"):
            results = await asyncio.gather(
                *(recorder.record(recorded_answer(http.app, owner, f"q{n}")) for n in range(10)),
                return_exceptions=True,
            )
    finally:
        await recorder.close()
        await hurried.close()
    assert all(isinstance(result, DependencyUnavailableError) for result in results)
    assert sent <= 3  # those in flight when the database was found gone, not one per answer


async def test_a_batch_the_server_cancels_is_tried_again(http, database_url):
    """A statement the server cancelled (or a deadlock it broke) is that batch's trouble,
    not the database being gone: the batch is tried again, and the answers queued
    behind it are written too."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    recorder = AnswerRecorder(batch_size=1)
    recorder.add_part(HistoryPart())
    await recorder.start(http.app[DATABASE])
    try:
        async with locked(database_url, "conversations"):
            answers = [
                asyncio.ensure_future(recorder.record(recorded_answer(http.app, owner, f"q{n}")))
                for n in range(5)
            ]
            first, *_ = await waiting_for_lock(database_url)
            await query(database_url, "SELECT pg_cancel_backend(%s)", (first,))
            await asyncio.sleep(0.2)  # the cancelled batch has failed meanwhile
        results = await asyncio.gather(*answers, return_exceptions=True)
    finally:
        await recorder.close()
    assert results == [None] * 5


class SpoiledThenGone(HistoryPart):
    """relay's history part, but a batch of several fails on its rows (one answer
    spoiled it), and alone, each answer finds the database out of reach."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    async def write(self, tx: Batch, answers: Sequence[Answer]) -> None:
        self.writes.append(len(answers))
        if len(answers) > 1:
            raise ValueError("one answer's rows spoil the batch")
        raise DependencyUnavailableError("The database is unavailable; try again shortly.")


async def record_together(http: Any, part: Any, count: int) -> list[Any]:
    """`count` answers recorded through `part` alone, queued together (one batch)."""
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    recorder = AnswerRecorder()
    recorder.add_part(part)
    await recorder.start(http.app[DATABASE])
    try:
        answers = [recorded_answer(http.app, owner, f"q{n}") for n in range(count)]
        return await asyncio.gather(
            *(recorder.record(answer) for answer in answers), return_exceptions=True
        )
    finally:
        await recorder.close()


async def test_answers_tried_one_by_one_stop_at_a_database_out_of_reach(http, database_url):
    """Once the database itself fails while answers are tried alone, the rest fail at
    once: one by one, each would have waited its own timeout (minutes for a batch)."""
    part = SpoiledThenGone()
    results = await record_together(http, part, 5)
    assert all(isinstance(result, DependencyUnavailableError) for result in results)
    assert part.writes == [5, 5, 1]  # whole, whole again, then the first alone only


class SpoiledThenOneDeadlocks(SpoiledThenGone):
    """As SpoiledThenGone, but alone the first answer loses a deadlock (the server
    refusing it, not being gone), and the others are written."""

    async def write(self, tx: Batch, answers: Sequence[Answer]) -> None:
        self.writes.append(len(answers))
        if len(answers) > 1:
            raise ValueError("one answer's rows spoil the batch")
        if len(self.writes) == 3:
            try:
                raise psycopg2.errors.DeadlockDetected()
            except psycopg2.errors.DeadlockDetected as deadlock:
                raise DependencyUnavailableError("The database is unavailable.") from deadlock
        await HistoryPart.write(self, tx, answers)


async def test_an_answer_alone_that_loses_a_deadlock_does_not_fail_the_rest(http, database_url):
    part = SpoiledThenOneDeadlocks()
    results = await record_together(http, part, 5)
    assert part.writes == [5, 5, 1, 1, 1, 1, 1]
    assert isinstance(results[0], DependencyUnavailableError)
    assert results[1:] == [None] * 4
    stored = await query(database_url, "SELECT content FROM messages WHERE role = 'user'")
    assert sorted(row["content"] for row in stored) == ["q1", "q2", "q3", "q4"]
