"""A group commit whose outcome relay lost (it gave up waiting, or the connection broke,
after the batch was sent) is settled by what PostgreSQL holds: its clients are told the
answer was saved if, and only if, it was; an answer is never stored twice.

COMMIT is held past PostgreSQL's point of no return the way a real server holds it:
waiting for a synchronous standby (here, one that never connects). The transaction is
then committed locally, and stays so whether the client leaves or the backend is
terminated; only its visibility waits. A batch held before that point (a deferred
constraint trigger waiting for a lock this test holds) is rolled back instead.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from relay.appkeys import ATTESTATION, DATABASE
from relay.errors import DependencyUnavailableError
from relay.services.answers import Answer
from relay.services.history_part import HistoryPart
from relay.services.receipts import ReceiptsPart
from relay.services.recorder import AnswerRecorder
from relay.stores.clients import Client, ClientStore
from relay.stores.database import Database, ServerProcess, connect
from relay.stores.database_failures import UnconfirmedCommitError
from relay.stores.lost_commits import stop_backend
from tests.api_calls import client_with_token
from tests.history_calls import chat, execute, query, recorded_answer
from tests.test_database_cancel import locked

TIMEOUT = 0.5  # relay's RELAY_DATABASE_TIMEOUT in these tests
STANDBY = "relay_test_standby_never_there"


async def owner(http: Any) -> Client:
    client, _ = await client_with_token(http)
    found = await ClientStore(http.app[DATABASE]).get(client["id"])
    assert found is not None
    return found


async def wait_for(database_url: str, sql: str, args: Any = None) -> list[dict[str, Any]]:
    for _ in range(500):
        if rows := await query(database_url, sql, args):
            return rows
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {sql}")


async def in_force(database_url: str) -> None:
    """Once a commit of our own waits for the standby (it is then let go: the server has
    read the setting; what it wrote is nothing)."""
    probe = await connect(database_url, timeout=10)
    try:
        async with probe.cursor() as cur:
            await cur.execute("SET synchronous_commit = on")
            for _ in range(100):
                # Catalog rows: WAL that a commit waits for, unlike an xid alone.
                write = asyncio.ensure_future(
                    cur.execute("CREATE TEMP TABLE probe (); DROP TABLE probe")
                )
                while not write.done():
                    waiting = await query(
                        database_url,
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                        " WHERE pid = %s AND wait_event = 'SyncRep'",
                        (await probe.get_backend_pid(),),
                    )
                    if waiting:
                        await write
                        return
                    await asyncio.sleep(0.01)
                await write  # committed before the setting was read: again
    finally:
        await probe.close()
    raise AssertionError("commits never waited for the standby")


@asynccontextmanager
async def commits_wait_for_a_standby(postgres_url: str, database_url: str) -> AsyncIterator[None]:
    """While open, a COMMIT made with synchronous_commit = on (relay's sessions in these
    tests; the test server's default is off) waits for a standby that never comes."""
    await execute(postgres_url, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY}'")
    await execute(postgres_url, "SELECT pg_reload_conf()")
    try:
        await in_force(database_url)
        yield
    finally:
        await execute(postgres_url, "ALTER SYSTEM RESET synchronous_standby_names")
        await execute(postgres_url, "SELECT pg_reload_conf()")


@asynccontextmanager
async def standby_arrives_once_relay_gave_up(
    postgres_url: str, database_url: str
) -> AsyncIterator[None]:
    """Within commits_wait_for_a_standby: once relay has given up on a COMMIT held for
    the standby (its server process is gone), the standby is no longer asked for, and
    every commit waiting for it completes (so does relay's check, confirm_durable)."""

    async def arrive() -> None:
        (held,) = await wait_for(
            database_url,
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            " AND datname = current_database() ORDER BY backend_start LIMIT 1",
        )
        await wait_for(
            database_url,
            "SELECT true AS gone WHERE NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
            (held["pid"],),
        )
        await execute(postgres_url, "ALTER SYSTEM RESET synchronous_standby_names")
        await execute(postgres_url, "SELECT pg_reload_conf()")

    arriving = asyncio.ensure_future(arrive())
    try:
        yield
        await arriving
    finally:
        arriving.cancel()


async def waiting_for_the_standby(database_url: str) -> int:
    """How many server processes of this database wait for a synchronous standby."""
    (row,) = await query(
        database_url,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE wait_event = 'SyncRep' AND datname = current_database()",
    )
    return int(row["n"])


async def make_durable(database_url: str) -> None:
    """Sessions opened from now on commit with synchronous_commit on, as on a production
    server (the test server's default is off)."""
    await execute(
        database_url,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on',"
        " current_database()); END $$",
    )


async def durable_database(database_url: str) -> Database:
    """relay's database with its short timeout, its sessions durable."""
    await make_durable(database_url)
    return await Database.open(database_url, size=2, timeout=TIMEOUT)


@pytest.fixture
async def recorder_for(http: Any, database_url: str) -> AsyncIterator[Any]:
    """`await recorder_for(receipts=..., history=...)`: a recorder of those parts over
    relay's database with its short timeout."""
    started: list[tuple[AnswerRecorder, Database]] = []

    async def start(*, receipts: bool, history: bool) -> AnswerRecorder:
        db = await durable_database(database_url)
        recorder = AnswerRecorder()
        if receipts:
            recorder.add_part(ReceiptsPart(http.app[ATTESTATION].identity))
        if history:
            recorder.add_part(HistoryPart())
        await recorder.start(db)
        started.append((recorder, db))
        return recorder

    yield start
    for recorder, db in started:
        await recorder.close()
        await db.close()


async def stored(database_url: str, answer: Answer) -> dict[str, int]:
    """How many rows of each kind `answer` has in the database."""
    (row,) = await query(
        database_url,
        "SELECT (SELECT count(*) FROM receipts WHERE id = %s) AS receipts,"
        " (SELECT count(*) FROM messages WHERE request_id = %s) AS messages",
        (answer.receipt_id, answer.request_id),
    )
    return {"receipts": row["receipts"], "messages": row["messages"]}


# receipts, history, store: what a batch writes (both; receipts only; history only).
KINDS = {
    "receipts and history": (True, True, True),
    "receipts only": (True, False, False),
    "history only": (False, True, True),
}


def expected_rows(kind: str) -> dict[str, int]:
    receipts, history, store = KINDS[kind]
    return {"receipts": int(receipts), "messages": 2 if history and store else 0}


async def of_kind(
    http: Any, recorder_for: Any, kind: str
) -> tuple[AnswerRecorder, Callable[[str], Answer]]:
    """A recorder writing `kind` of batch, and what makes one answer of that kind."""
    client = await owner(http)
    receipts, history, store = KINDS[kind]
    recorder = await recorder_for(receipts=receipts, history=history)
    return recorder, lambda text: recorded_answer(http.app, client, text, store=store)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_batch_committed_after_relay_gave_up_is_reported_saved_once(
    http, postgres_url, database_url, recorder_for, caplog, kind
):
    caplog.set_level(logging.INFO, logger="relay.services.batch_write")
    recorder, new_answer = await of_kind(http, recorder_for, kind)
    answer = new_answer(f"held {kind}")

    async with (
        commits_wait_for_a_standby(postgres_url, database_url),
        standby_arrives_once_relay_gave_up(postgres_url, database_url),
    ):
        outcome = await asyncio.gather(recorder.record(answer), return_exceptions=True)

    # Committed (its rows are there, and as durably as any commit): its client is told
    # it was saved, and does not retry.
    assert (outcome, await stored(database_url, answer)) == ([None], expected_rows(kind))
    assert "answer batch committed after all" in [r.getMessage() for r in caplog.records]


async def test_a_batch_committed_on_the_primary_alone_is_not_reported_saved(
    http, postgres_url, database_url, recorder_for, caplog
):
    """relay terminating the server process that held the COMMIT ends its wait for the
    standby: the rows are there, on this server alone, which a failover loses. Its
    client is not told the answer was saved; the operator sees which may be."""
    recorder, new_answer = await of_kind(http, recorder_for, "receipts and history")
    answer = new_answer("on the primary alone")

    async with commits_wait_for_a_standby(postgres_url, database_url):
        with pytest.raises(DependencyUnavailableError):
            await recorder.record(answer)
        # Nothing of relay's is left waiting for the standby, holding a connection.
        assert await waiting_for_the_standby(database_url) == 0

    assert await stored(database_url, answer) == expected_rows("receipts and history")
    unknown = [r for r in caplog.records if r.getMessage() == "answer batch outcome unknown"]
    assert [record.__dict__["error"] for record in unknown] == [
        "its commit was not confirmed durable in time"
    ]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_batch_relay_gave_up_on_that_did_not_commit_is_reported_not_saved(
    http, database_url, recorder_for, caplog, kind
):
    recorder, new_answer = await of_kind(http, recorder_for, kind)
    answer = new_answer(f"dropped {kind}")

    async with locked(database_url, "clients"):  # every kind of row names its client
        with pytest.raises(DependencyUnavailableError):
            await recorder.record(answer)
    await asyncio.sleep(0.2)  # the lock is free: a batch left running would commit now

    assert await stored(database_url, answer) == {"receipts": 0, "messages": 0}
    messages = [record.getMessage() for record in caplog.records]
    assert "answer batch outcome unknown" not in messages

    # Its client asks again: the answer is stored, once.
    again = new_answer(f"dropped {kind}")
    await recorder.record(again)
    assert await stored(database_url, again) == expected_rows(kind)
    if expected_rows(kind)["messages"]:
        rows = await query(database_url, "SELECT count(*) AS n FROM messages WHERE role = 'user'")
        assert rows == [{"n": 1}]


async def test_every_answer_of_batches_in_flight_is_reported_as_it_was_stored(
    http, postgres_url, database_url, recorder_for
):
    """Several batches held at once (the next is sent while one commits; each waits for
    the one before it at the receipt chain's head): each answer's report agrees with
    its rows, and none is stored twice."""
    client = await owner(http)
    recorder = await recorder_for(receipts=True, history=True)
    answers = [recorded_answer(http.app, client, f"many {n}") for n in range(6)]

    async with (
        commits_wait_for_a_standby(postgres_url, database_url),
        standby_arrives_once_relay_gave_up(postgres_url, database_url),
    ):
        outcomes = await asyncio.gather(
            *(recorder.record(answer) for answer in answers), return_exceptions=True
        )
    await asyncio.sleep(0.2)

    for answer, outcome in zip(answers, outcomes, strict=True):
        rows = await stored(database_url, answer)
        saved = {"receipts": 1, "messages": 2}
        assert (outcome is None, rows) in ((True, saved), (False, {"receipts": 0, "messages": 0}))
    assert outcomes.count(None) >= 1


async def test_a_batch_whose_rows_name_no_id_known_before_is_logged_as_unknown(
    http, postgres_url, database_url, recorder_for, caplog
):
    """History only (receipts off), continuing a conversation, with no reserved row id:
    none of its rows says exactly whether it committed (a request id is the client's to
    choose and repeat). Its client is told the answer was not saved, as before this
    was settled; the operator sees which answers may be stored after all."""
    client = await owner(http)
    recorder = await recorder_for(receipts=False, history=True)
    first = recorded_answer(http.app, client, "opening")
    await recorder.record(first)
    answer = recorded_answer(
        http.app,
        client,
        "continued",
        conversation_id=first.conversation_id,
        continues_conversation=True,
    )

    async with commits_wait_for_a_standby(postgres_url, database_url):
        with pytest.raises(DependencyUnavailableError):
            await recorder.record(answer)

    unknown = [r for r in caplog.records if r.getMessage() == "answer batch outcome unknown"]
    assert [record.__dict__["request_ids"] for record in unknown] == [["continued"]]
    assert unknown[0].levelno == logging.WARNING


async def test_a_batch_lost_before_its_commit_was_sent_is_known_not_committed(database_url):
    db = await Database.open(database_url, size=1, timeout=0.3)
    try:
        async with locked(database_url, "receipt_chain_head"):
            with pytest.raises(DependencyUnavailableError) as lost:
                async with db.batch() as tx:
                    await tx.execute("SELECT seq FROM receipt_chain_head")  # waits; no COMMIT yet
                    tx.defer("UPDATE receipt_chain_head SET sha256 = 'never'")
    finally:
        await db.close()
    assert not isinstance(lost.value, UnconfirmedCommitError)


async def test_a_batch_lost_after_its_commit_was_sent_names_its_server_process(database_url):
    db = await Database.open(database_url, size=1, timeout=0.3)
    try:
        async with locked(database_url, "receipt_chain_head"):
            batch = asyncio.ensure_future(write_at_commit(db))
            (waiting,) = await wait_for(
                database_url,
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            with pytest.raises(UnconfirmedCommitError) as lost:
                await batch
            assert lost.value.backend.pid == waiting["pid"]
            assert await stop_backend(db, lost.value.backend)
            gone = "SELECT pid FROM pg_stat_activity WHERE pid = %s"
            assert await query(database_url, gone, (waiting["pid"],)) == []
    finally:
        await db.close()


async def test_a_pid_of_another_server_stops_no_process_here(database_url):
    # After a failover, the process that ran the batch was the old primary's; the new
    # primary may well have a process with that pid (relay's own, even), which must
    # be left alone: the process named is simply not here, and what is stored here
    # settles the batch.
    db = await Database.open(database_url, size=1, timeout=0.3)
    bystander = await connect(database_url, timeout=10)
    try:
        pid = await bystander.get_backend_pid()
        elsewhere = ServerProcess(pid, "2001-02-03 04:05:06.789+00")
        assert await stop_backend(db, elsewhere)  # not here: gone, as far as relay can tell
        async with bystander.cursor() as cur:
            await cur.execute("SELECT 1")  # untouched
    finally:
        await bystander.close()
        await db.close()


async def write_at_commit(db: Database) -> None:
    async with db.batch() as tx:
        await tx.execute("SELECT 1")  # the transaction is open: its COMMIT is what waits
        tx.defer("UPDATE receipt_chain_head SET sha256 = 'lost'")


async def test_only_a_process_of_relays_own_database_is_stopped(postgres_url, database_url):
    db = await Database.open(database_url, size=1, timeout=0.3)
    other = await connect(postgres_url, timeout=10)  # another database's session
    try:
        pid = await other.get_backend_pid()
        (row,) = await query(
            database_url,
            "SELECT backend_start::text AS started FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        )
        process = ServerProcess(pid, row["started"])
        assert not await stop_backend(db, process)  # still there when the wait ends
        async with other.cursor() as cur:
            await cur.execute("SELECT 1")
    finally:
        await other.close()
        await db.close()


async def test_a_client_whose_answer_committed_after_relay_gave_up_gets_its_answer(
    make_settings, make_client, postgres_url, database_url, caplog
):
    caplog.set_level(logging.INFO, logger="relay.services.batch_write")
    await make_durable(database_url)
    http = await make_client(make_settings(database_timeout=TIMEOUT))
    _, token = await client_with_token(http)

    async with (
        commits_wait_for_a_standby(postgres_url, database_url),
        standby_arrives_once_relay_gave_up(postgres_url, database_url),
    ):
        response = await chat(http, token, "held over http")

    assert response.status == 200, await response.text()
    body = await response.json()
    receipt = response.headers["X-Receipt-Id"]
    rows = await query(
        database_url,
        "SELECT (SELECT count(*) FROM receipts WHERE id = %s) AS receipts,"
        " (SELECT count(*) FROM messages WHERE content = 'held over http') AS questions",
        (receipt,),
    )
    assert rows == [{"receipts": 1, "questions": 1}]
    assert body["choices"][0]["message"]["content"]
    settled = [r.getMessage() for r in caplog.records if "committed after all" in r.getMessage()]
    assert settled == ["answer batch committed after all"]


async def test_a_committed_answer_is_not_kept_alive_while_the_recorder_waits(http, recorder_for):
    # Its bodies may be megabytes: once committed, nothing of relay's holds it while
    # the recorder waits, however long, for the next answer.
    recorder, new_answer = await of_kind(http, recorder_for, "receipts and history")
    answer = new_answer("let go once committed")
    await recorder.record(answer)
    await asyncio.sleep(0.05)  # its batch's task finishes
    kept = weakref.ref(answer)
    del answer
    gc.collect()
    assert kept() is None
