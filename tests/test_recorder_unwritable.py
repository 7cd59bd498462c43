"""A group commit that fails for one answer whose rows can no longer be written (its
conversation erased, its client deleted since its request came in) fails that answer
alone and commits the others together, not one after another."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import relay.services.recorder as recorder_module
from relay.appkeys import ANSWER_RECORDER, DATABASE
from relay.errors import AuthenticationError, ConversationDeletedError
from relay.services.answers import Answer
from relay.stores.clients import Client, ClientStore
from tests.api_calls import client_with_token
from tests.history_calls import CONVERSATION, chat, execute, query, recorded_answer


async def owner(http: Any) -> tuple[Client, str]:
    client, token = await client_with_token(http)
    found = await ClientStore(http.app[DATABASE]).get(client["id"])
    assert found is not None
    return found, token


def counting_writes(recorder: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The request ids of each batch the recorder writes from now on."""
    writes: list[list[str]] = []
    write = recorder._write

    async def counted(answers: list[Answer], **options: Any) -> None:
        writes.append([answer.request_id for answer in answers])
        await write(answers, **options)

    monkeypatch.setattr(recorder, "_write", counted)
    return writes


def formed(writes: list[list[str]]) -> list[list[str]]:
    """The batches as the recorder formed them: one written again whole (it overtook the
    batch it chains its receipts on, and was refused) counted once."""
    batches: list[list[str]] = []
    for batch in writes:
        if batch not in batches:
            batches.append(batch)
    return batches


async def record_together(recorder: Any, answers: list[Answer]) -> list[object]:
    """Queued in one go, so the writer takes them as one batch."""
    return await asyncio.gather(
        *(recorder.record(answer) for answer in answers), return_exceptions=True
    )


async def test_an_answer_to_an_erased_conversation_fails_alone(http, database_url, monkeypatch):
    client, token = await owner(http)
    erased = (await chat(http, token, "soon erased")).headers[CONVERSATION]
    recorder = http.app[ANSWER_RECORDER]
    answers = [recorded_answer(http.app, client, f"kept {n}") for n in range(4)]
    answers.insert(
        2,
        recorded_answer(
            http.app, client, "lost", conversation_id=erased, continues_conversation=True
        ),
    )
    await execute(database_url, "DELETE FROM conversations WHERE id = %s", (erased,))
    writes = counting_writes(recorder, monkeypatch)

    outcomes = await record_together(recorder, answers)

    assert isinstance(outcomes[2], ConversationDeletedError)
    assert outcomes[:2] + outcomes[3:] == [None] * 4
    # Once whole (failing), then the four others together: not each on its own.
    assert [sorted(batch) for batch in writes] == [
        sorted(answer.request_id for answer in answers),
        sorted(f"kept {n}" for n in range(4)),
    ]
    stored = await query(database_url, "SELECT request_id FROM messages WHERE role = 'user'")
    assert {row["request_id"] for row in stored} == {f"kept {n}" for n in range(4)}
    assert not await query(database_url, "SELECT id FROM conversations WHERE id = %s", (erased,))
    # What is left to keep of it is its receipt (of the error its client then gets),
    # as for `store: false`: recorded again, that alone is written.
    lost = answers[2]
    assert lost.store is False and lost.recorded is False
    lost.status = "failed"
    await recorder.record(lost)
    assert await query(database_url, "SELECT id FROM receipts WHERE id = %s", (lost.receipt_id,))
    assert not await query(database_url, "SELECT id FROM conversations WHERE id = %s", (erased,))


async def test_an_answer_of_a_deleted_client_fails_alone(http, database_url, monkeypatch):
    """Its receipt (it stores no history) can no longer name its client."""
    client, _ = await owner(http)
    gone, _ = await owner(http)
    recorder = http.app[ANSWER_RECORDER]
    answers = [recorded_answer(http.app, client, f"kept {n}") for n in range(3)]
    answers.append(recorded_answer(http.app, gone, "lost", store=False))
    await execute(database_url, "DELETE FROM clients WHERE id = %s", (gone.id,))
    writes = counting_writes(recorder, monkeypatch)

    outcomes = await record_together(recorder, answers)

    # Not "please retry" (a 503): asked again, it would only meet a 401.
    refused = outcomes[3]
    assert isinstance(refused, AuthenticationError)
    assert (refused.status, refused.code) == (401, "token_revoked")
    assert outcomes[:3] == [None] * 3
    assert len(writes) == 2
    receipts = await query(database_url, "SELECT client_id FROM receipts")
    assert [str(row["client_id"]) for row in receipts].count(client.id) == 3


async def test_answers_of_many_rows_are_spread_over_batches(http, database_url, monkeypatch):
    """A batch closes before its rows pass BATCH_ROWS: answers of a thousand messages
    each, arriving together, cannot make one batch that runs past its timeout (and
    fails every answer queued behind it)."""
    client, _ = await owner(http)
    recorder = http.app[ANSWER_RECORDER]
    turn = [{"role": "user", "content": f"m{n}"} for n in range(999)]
    answers = [
        recorded_answer(http.app, client, f"big {n}", request={"messages": turn}) for n in range(9)
    ]
    writes = counting_writes(recorder, monkeypatch)

    assert await record_together(recorder, answers) == [None] * 9

    # 1,001 rows each (turn, reply, receipt): four fit under 4,096, not five. (PostgreSQL
    # may let the last overtake the one before it, which it waits for: it is tried again.)
    batches = formed(writes)
    assert [len(batch) for batch in batches] == [4, 4, 1]
    assert [request for batch in batches for request in batch] == [a.request_id for a in answers]
    stored = await query(
        database_url, "SELECT count(*) AS n FROM messages WHERE client_id = %s", (client.id,)
    )
    assert stored[0]["n"] == 9 * 1000


async def test_large_answers_are_spread_over_batches(http, database_url, monkeypatch):
    """A batch closes before its statements pass BATCH_BYTES: the driver copies a
    batch's text several times over, so large answers arriving together must not make
    one batch of them all."""
    monkeypatch.setattr(recorder_module, "BATCH_BYTES", 3 * 10_000)
    client, _ = await owner(http)
    recorder = http.app[ANSWER_RECORDER]
    answers = [
        recorded_answer(http.app, client, f"large {n}", request_body=b"x" * 10_000)
        for n in range(5)
    ]
    writes = counting_writes(recorder, monkeypatch)

    assert await record_together(recorder, answers) == [None] * 5

    # 11 KB and more each (its body, its receipt): two fit under 30 KB, not three. (A
    # batch that met the one before it still committing is tried again: more writes.)
    assert max(len(batch) for batch in writes) == 2
    assert {request for batch in writes for request in batch} == {a.request_id for a in answers}
