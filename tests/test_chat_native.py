"""POST /v1/chat: relay keeps the conversation, builds the context, stores both sides."""

import asyncio
import fcntl
import hashlib
import logging
import re
import socket
import sys
import tempfile
import termios

import orjson
import pytest
from aiohttp import web

from relay.api.chat_events import PAD_STEP, HashedEventSource
from relay.app import create_app
from relay.appkeys import DATABASE, IN_FLIGHT
from relay.services.native_chat import chat_messages
from relay.simulator import completion_text
from relay.upstreams import pipe
from tests.api_calls import assert_error, bearer, client_with_token, post_and_never_read
from tests.history_calls import CONVERSATION, chat, refuse_history_writes, stored_messages
from tests.receipt_calls import fetch_receipt, fetch_receipt_when_committed
from tests.test_metrics import scrape, value
from tests.test_metrics_outcomes import settled


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def native(http, token, message="Hello there", **fields):
    return await http.post("/v1/chat", json={"message": message, **fields}, headers=bearer(token))


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = block.split("\n")
        if block.startswith(":") or not block.strip():
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: ") :], orjson.loads(lines[1][len("data: ") :])))
    return events


async def test_a_message_starts_a_conversation_and_both_sides_are_stored(
    http, database_url, simulator
):
    client, token = await client_with_token(http)
    response = await native(http, token, "What is relay?")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"conversation_id", "message", "usage"}
    assert response.headers[CONVERSATION] == body["conversation_id"]
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"] == completion_text(simulator.config.tokens)
    assert body["usage"]["completion_tokens"] == simulator.config.tokens
    # The provider was asked to stream, with the default (first configured) model.
    sent = simulator.state.requests[-1].json()
    assert sent["model"] == "sim-small" and sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "What is relay?"}]
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["content"]) for row in rows] == [
        ("user", "What is relay?"),
        ("assistant", body["message"]["content"]),
    ]
    assert rows[1]["id"] == body["message"]["id"]
    assert rows[1]["created_at"].isoformat() == body["message"]["created_at"]
    assert rows[0]["created_at"] == rows[1]["created_at"]  # never the answer before its question
    assert str(rows[1]["conversation_id"]) == body["conversation_id"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_turns_rows_have_ids_in_their_order(http, database_url, stream):
    # The answer's row id is taken before the commit (its event names it); the rows
    # of its turn take theirs with it, so ids never run backwards within a turn.
    client, token = await client_with_token(http)
    first = await native(http, token, "Hello", system="Be brief", stream=stream)
    await first.read()
    await (await native(http, token, "Again", conversation_id=first.headers[CONVERSATION])).read()
    rows = await stored_messages(database_url, client["id"])
    assert [row["role"] for row in rows] == ["system", "user", "assistant", "user", "assistant"]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)


async def test_the_context_comes_from_the_stored_conversation(http, simulator):
    _, token = await client_with_token(http)
    first = await (await native(http, token, "one", system="Answer in French.")).json()
    conversation = first["conversation_id"]
    second = await native(http, token, "two", conversation_id=conversation)
    assert second.status == 200
    assert (await second.json())["conversation_id"] == conversation
    assert simulator.state.requests[-1].json()["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first["message"]["content"]},
        {"role": "user", "content": "two"},
    ]
    # A system given now replaces the stored one for this turn.
    await native(http, token, "three", conversation_id=conversation, system="Be terse.")
    assert simulator.state.requests[-1].json()["messages"][0] == {
        "role": "system",
        "content": "Be terse.",
    }


async def test_the_context_keeps_the_names_stored_with_its_messages(http, simulator):
    """Names a chat completion gave its participants go on in the context, those every
    provider takes; one only some do ("Ada Lovelace": OpenAI refuses spaces) is left out."""
    _, token = await client_with_token(http)
    conversation = None
    for name in ("ada_1", "Ada Lovelace"):
        headers = bearer(token) | ({CONVERSATION: conversation} if conversation else {})
        body = {"model": "gpt-sim", "messages": [{"role": "user", "name": name, "content": name}]}
        response = await http.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status == 200, await response.text()
        conversation = response.headers[CONVERSATION]
    answer = completion_text(simulator.config.tokens)
    await native(http, token, "and you?", conversation_id=conversation)
    assert simulator.state.requests[-1].json()["messages"] == [
        {"role": "user", "name": "ada_1", "content": "ada_1"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Ada Lovelace"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and you?"},
    ]


async def test_each_turn_stores_only_what_it_added(http, database_url, simulator):
    # A failed answer leaves no assistant text in the context; the retry must
    # not store the system message and the earlier question again.
    client, token = await client_with_token(http)
    simulator.config.error_status = 500
    first = await native(http, token, "first question", system="sys")
    conversation = first.headers[CONVERSATION]
    simulator.config.error_status = None
    await native(http, token, "second question", conversation_id=conversation)
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["content"] or row["status"]) for row in rows] == [
        ("system", "sys"),
        ("user", "first question"),
        ("assistant", "failed"),
        ("user", "second question"),
        ("assistant", completion_text(simulator.config.tokens)),
    ]


async def test_the_context_keeps_the_most_recent_messages_within_the_budget(
    make_client, make_settings, simulator
):
    answer_chars = len(completion_text(simulator.config.tokens))
    # Room for the system message, one answer and one question: not more.
    budget = len("sys") + answer_chars + len("question 2")
    http = await make_client(make_settings(rate_limits=False, chat_context_chars=budget))
    _, token = await client_with_token(http)
    conversation = (await (await native(http, token, "question 1", system="sys")).json())[
        "conversation_id"
    ]
    await native(http, token, "question 2", conversation_id=conversation)
    await native(http, token, "question 3", conversation_id=conversation)
    messages = simulator.state.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "sys"
    assert messages[1]["content"] == "question 2"
    assert messages[-1]["content"] == "question 3"


@pytest.mark.parametrize("budget", [0, 5])
async def test_a_system_message_past_the_budget_goes_whole_and_alone(
    make_client, make_settings, simulator, budget
):
    http = await make_client(make_settings(rate_limits=False, chat_context_chars=budget))
    _, token = await client_with_token(http)
    system = "You answer in French. " * 3
    first = await (await native(http, token, "question 1", system=system)).json()
    await native(http, token, "question 2", conversation_id=first["conversation_id"])
    messages = simulator.state.requests[-1].json()["messages"]
    assert messages == [
        {"role": "system", "content": system},
        {"role": "user", "content": "question 2"},
    ]


async def test_a_long_conversation_is_read_back_page_by_page(make_client, make_settings, simulator):
    # More messages than one page of the context query: all fit the budget.
    http = await make_client(make_settings(rate_limits=False, chat_context_chars=10**6))
    _, token = await client_with_token(http)
    first = await (await native(http, token, "question 0")).json()
    conversation = first["conversation_id"]
    for n in range(1, 40):
        await native(http, token, f"question {n}", conversation_id=conversation)
    await native(http, token, "last", conversation_id=conversation)
    messages = simulator.state.requests[-1].json()["messages"]
    questions = [m["content"] for m in messages if m["role"] == "user"]
    assert questions == [f"question {n}" for n in range(40)] + ["last"]
    assert len(messages) == 81


async def test_a_streamed_chat_sends_deltas_then_the_stored_answer(http, database_url, simulator):
    client, token = await client_with_token(http)
    response = await native(http, token, "Stream it", stream=True)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    conversation = response.headers[CONVERSATION]
    raw = await response.read()
    assert raw.startswith(b"event: message.delta\ndata: {")
    events = sse_events(raw)
    deltas = [data["content"] for name, data in events if name == "message.delta"]
    assert "".join(deltas) == completion_text(simulator.config.tokens)
    assert len(deltas) == simulator.config.tokens
    # As OpenAI pads its chunks: to the next multiple of 16 bytes, then a random 0 to 15 more.
    extras = []
    for name, data in events:
        if name == "message.delta":
            assert set(data) == {"content", "obfuscation"}
            assert re.fullmatch("[A-Za-z0-9]*", data["obfuscation"])
            size = len(orjson.dumps(data["content"]))
            extras.append(len(data["obfuscation"]) - (-size % PAD_STEP))
    assert all(0 <= extra < PAD_STEP for extra in extras) and len(set(extras)) > 1
    name, done = events[-1]
    assert name == "message.done"
    assert done["conversation_id"] == conversation
    assert done["message"]["content"] == "".join(deltas)
    assert done["usage"]["completion_tokens"] == simulator.config.tokens
    rows = await stored_messages(database_url, client["id"])
    assert rows[-1]["id"] == done["message"]["id"]
    assert rows[-1]["content"] == done["message"]["content"]


async def test_a_refused_write_ends_the_stream_with_an_error_event(http, database_url):
    client, token = await client_with_token(http)
    await refuse_history_writes(database_url)
    raw = await (await native(http, token, stream=True)).read()
    events = sse_events(raw)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "history_unavailable"
    assert "message.done" not in [name for name, _ in events]
    await assert_error(await native(http, token), 503, "history_unavailable")
    assert await stored_messages(database_url, client["id"]) == []


async def test_a_cut_stream_ends_with_an_error_event_and_is_stored_as_cut(
    http, database_url, simulator
):
    client, token = await client_with_token(http)
    simulator.config.cut_after = 2
    events = sse_events(await (await native(http, token, stream=True)).read())
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "upstream_cut"
    rows = await stored_messages(database_url, client["id"])
    assert rows[-1]["status"] == "cut"
    assert rows[-1]["content"] == completion_text(2)
    await assert_error(await native(http, token), 502, "upstream_cut")
    assert (await stored_messages(database_url, client["id"]))[-1]["status"] == "cut"


async def test_a_cut_answer_that_cannot_be_saved_still_says_it_was_cut(
    http, database_url, simulator
):
    # The client is told the provider broke off; that relay could not keep the broken
    # answer is only logged (as /v1/chat/completions does for a non-streamed one).
    _, token = await client_with_token(http)
    await refuse_history_writes(database_url)
    simulator.config.cut_after = 2
    events = sse_events(await (await native(http, token, stream=True)).read())
    assert events[-1] == ("error", events[-1][1])
    assert events[-1][1]["error"]["code"] == "upstream_cut"
    await assert_error(await native(http, token), 502, "upstream_cut")


async def test_a_provider_that_stalls_before_the_answer_is_a_504(
    make_client, make_settings, provider_upstream, database_url
):
    # /v1/chat reads the provider's stream whole before a non-streamed client gets a
    # byte: a provider gone quiet is a timeout, as on /v1/chat/completions.
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(30)
        return response

    stalled = await provider_upstream(stalls, "stalls", models={"slow": "slow"}, timeout_s=0.5)
    http = await make_client(make_settings(upstreams=(stalled,), rate_limits=False))
    client, token = await client_with_token(http)
    await assert_error(await native(http, token, model="slow"), 504, "upstream_timeout")
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "failed"),
    ]


@pytest.mark.parametrize(
    "path,stream",
    [("/v1/chat", False), ("/v1/chat", True), ("/v1/chat/completions", True)],
    ids=["whole", "streamed", "completions streamed"],
)
async def test_postgres_gone_before_the_answer_is_saved_is_history_unavailable(
    http, make_client, make_settings, simulator, path, stream
):
    # The answer's row id is taken from PostgreSQL first: that failing is the answer
    # not being saved, and the client is told so in those words (README), as for a
    # commit that fails on /v1/chat/completions: the answer failed, and the
    # x-receipt-id its client was sent names no receipt.
    _, token = await client_with_token(http)
    text = await scrape(http)
    failures = value(text, "relay_history_commit_failures_total")
    failed = value(text, "relay_answers_total", outcome="failed")
    simulator.config.tokens, simulator.config.token_delay = 20, 0.05
    if path == "/v1/chat":
        asked = asyncio.ensure_future(native(http, token, stream=stream))
    else:
        asked = asyncio.ensure_future(chat(http, token, stream=stream))
    await simulator.state.wait_for(lambda state: state.streams_open == 1, timeout=10)
    http.app[DATABASE].pool.close()  # nothing more can be had from it
    await http.app[DATABASE].pool.wait_closed()
    response = await asked
    receipt_id = response.headers["x-receipt-id"]
    if stream:
        raw = await response.read()
        last = raw.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"event: error\n" if path == "/v1/chat" else b"data: ")
        assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["code"] == "history_unavailable"
    else:
        await assert_error(response, 503, "history_unavailable")
    assert await settled(http, "relay_history_commit_failures_total", failures) == failures + 1
    assert await settled(http, "relay_answers_total", failed, outcome="failed") == failed + 1
    # Another instance, its database within reach, says so.
    other = await make_client(make_settings(rate_limits=False))
    found = await other.get(f"/v1/receipts/{receipt_id}", headers=bearer(token))
    await assert_error(found, 404, "receipt_not_found")


async def test_a_failed_answers_text_is_not_given_back_as_context(
    make_client, make_settings, provider_upstream
):
    # The provider sent some words, then an error event: that is no answer, and its
    # question gives way to the retry rather than being answered by the fragment.
    seen: list[list[dict]] = []
    failing = [True]

    async def answers(request: web.Request) -> web.StreamResponse:
        seen.append((await request.json())["messages"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}
        chunk["choices"][0]["delta"] = {"content": "Partial answer"}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if failing[0]:
            await response.write(b'data: {"error": {"message": "overloaded"}}\n\n')
        else:
            chunk["choices"][0] = {"index": 0, "delta": {}, "finish_reason": "stop"}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        return response

    flaky = await provider_upstream(answers, "flaky", models={"flaky": "flaky"})
    http = await make_client(make_settings(upstreams=(flaky,), rate_limits=False))
    _, token = await client_with_token(http)
    first = await native(http, token, "Q1", model="flaky", stream=True)
    assert sse_events(await first.read())[-1][0] == "error"
    failing[0] = False
    again = await native(
        http, token, "Q1 again", model="flaky", conversation_id=first.headers[CONVERSATION]
    )
    assert again.status == 200, await again.text()
    assert seen[-1] == [{"role": "user", "content": "Q1 again"}]


async def test_a_provider_refusal_is_passed_on_and_stored_as_failed(http, database_url, simulator):
    client, token = await client_with_token(http)
    simulator.config.error_status = 503
    response = await native(http, token)
    await assert_error(response, 502)
    assert CONVERSATION in response.headers
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "failed"),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_refusal_names_the_receipt_of_the_error(http, simulator, stream):
    _, token = await client_with_token(http)
    simulator.config.error_status = 400
    response = await native(http, token, stream=stream)
    body = await response.read()
    assert response.status == 400
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["status"] == "failed"
    assert receipt["response_sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_client_leaving_a_stream_gets_a_receipt_of_what_it_received(http, simulator):
    _, token = await client_with_token(http)
    simulator.config.tokens = 500
    simulator.config.token_delay = 0.05
    response = await native(http, token, stream=True)
    receipt_id = response.headers["x-receipt-id"]
    received = b""
    while b"message.delta" not in received:
        received += await response.content.readany()
    response.close()  # relay is waiting for the provider's next token
    receipt = await fetch_receipt_when_committed(http, token, receipt_id)
    assert receipt["status"] == "cancelled"
    assert receipt["response_sha256"] != hashlib.sha256(b"").hexdigest()


async def test_unknown_or_foreign_conversations_are_404_before_forwarding(http, simulator):
    _, mine = await client_with_token(http)
    _, theirs = await client_with_token(http)
    foreign = (await (await native(http, theirs)).json())["conversation_id"]
    sent = len(simulator.state.requests)
    for bad in (foreign, "nope", "00000000-0000-0000-0000-000000000000"):
        await assert_error(
            await native(http, mine, conversation_id=bad), 404, "conversation_not_found"
        )
    assert len(simulator.state.requests) == sent


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "message"),
        ({"message": ""}, 400, "message"),
        ({"message": "   "}, 400, "message"),
        ({"message": 5}, 400, "message"),
        ({"message": "hi", "stream": "yes"}, 400, "stream"),
        ({"message": "hi", "system": 3}, 400, "system"),
        ({"message": "hi", "conversation_id": 3}, 400, "conversation_id"),
        ({"message": "hi", "model": "no-such-model"}, 404, "model"),
        # Fields it does not take are refused, not ignored: they would do nothing.
        ({"message": "hi", "temperature": 0.2}, 400, "temperature"),
        ({"message": "hi", "max_tokens": 5, "top_p": 1}, 400, "max_tokens"),
        ({"message": "hi", "messages": []}, 400, "messages"),
        ({"message": "hi", "store": False, "temperature": 0}, 400, "store"),
    ],
)
async def test_bad_requests_are_refused(http, simulator, body, status, param):
    _, token = await client_with_token(http)
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    error = await assert_error(response, status)
    assert error["param"] == param
    assert simulator.state.requests == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": "keep this", "message": "no, this"}',
        b'{"message": "hi", "stream": false, "stream": true}',
        b'{"message": "hi", "m\\u006fdel": "gpt-sim", "model": "sim-large"}',
    ],
)
async def test_a_field_named_twice_is_refused(http, database_url, simulator, body):
    client, token = await client_with_token(http)
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = await http.post("/v1/chat", data=body, headers=headers)
    await assert_error(response, 400, "invalid_request")
    assert simulator.state.requests == []
    assert await stored_messages(database_url, client["id"]) == []


@pytest.mark.parametrize("store", [False, True])
async def test_store_is_refused_and_nothing_is_stored(http, database_url, simulator, store):
    # /v1/chat keeps the conversation by definition: a client asking it not to
    # is told where a chat need not be stored, rather than having it stored.
    client, token = await client_with_token(http)
    response = await native(http, token, "hi", store=store)
    error = await assert_error(response, 400, "invalid_request")
    assert error["param"] == "store"
    assert "/v1/chat/completions" in error["message"]
    assert simulator.state.requests == []
    assert await stored_messages(database_url, client["id"]) == []


async def test_a_named_model_and_the_default_model_setting(make_client, make_settings, simulator):
    http = await make_client(make_settings(rate_limits=False, default_model="sim-large"))
    _, token = await client_with_token(http)
    await native(http, token)
    assert simulator.state.requests[-1].json()["model"] == "sim-large"
    await native(http, token, model="gpt-sim")
    assert simulator.state.requests[-1].json()["model"] == "sim-small"


async def test_a_client_without_history_cannot_use_it(http):
    _, token = await client_with_token(http, store_history=False)
    await assert_error(await native(http, token), 403, "history_disabled")


@pytest.mark.parametrize("stream", [False, True])
async def test_the_receipt_signs_the_exact_bytes_received(http, stream):
    _, token = await client_with_token(http)
    response = await native(http, token, stream=stream)
    raw = await response.read()
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["endpoint"] == "/v1/chat"
    assert receipt["response_sha256"] == hashlib.sha256(raw).hexdigest()
    assert receipt["conversation_id"] == response.headers[CONVERSATION]


async def test_the_conversation_can_be_read_back(http):
    _, token = await client_with_token(http)
    body = await (await native(http, token, "remember me")).json()
    conversation = await (
        await http.get(f"/v1/conversations/{body['conversation_id']}", headers=bearer(token))
    ).json()
    assert conversation["title"] == "remember me"
    assert [m["id"] for m in conversation["messages"]][-1] == body["message"]["id"]


async def test_a_client_that_stops_reading_is_cut_off_and_recorded_as_gone(
    http, database_url, simulator, monkeypatch
):
    monkeypatch.setattr("relay.upstreams.pipe.SEND_SECONDS", 0.5)
    client, token = await client_with_token(http)
    simulator.config.tokens = 200_000
    simulator.config.token_delay = 0
    body = orjson.dumps({"message": "Hello there", "stream": True})
    sock = await post_and_never_read(http, "/v1/chat", token, body)
    try:
        await simulator.state.wait_for(lambda state: state.streams_disconnected == 1, timeout=20)
        for _ in range(100):
            rows = await stored_messages(database_url, client["id"])
            if len(rows) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        sock.close()
    assert rows[-1]["status"] == "cancelled"  # the client's doing, not the provider's


def test_the_context_alternates_user_first_whatever_history_holds():
    def turn(role: str, content: str) -> dict[str, str]:
        return {"role": role, "content": content}

    context = [
        turn("assistant", "an answer whose question the budget left out"),
        turn("user", "q1"),
        turn("assistant", "a1"),
        turn("user", "q2, whose answer failed"),
        turn("user", "q2 again"),
        turn("assistant", "a2"),
        turn("user", "q3, unanswered"),
    ]
    assert chat_messages("sys", context, "q4") == [
        turn("system", "sys"),
        turn("user", "q1"),
        turn("assistant", "a1"),
        turn("user", "q2 again"),
        turn("assistant", "a2"),
        turn("user", "q4"),
    ]
    assert chat_messages(None, [], "hi") == [turn("user", "hi")]


async def small_send_buffer(request: web.Request, response: web.StreamResponse) -> None:
    """What the kernel holds of relay's bytes for a client: little, as under memory
    pressure (idle, it holds a few hundred KiB)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def unread(transport: asyncio.Transport) -> int:
    """Bytes relay wrote to a client that it has not read yet: in the transport's buffer
    and in the kernel's (SIOCOUTQ, the same number as TIOCOUTQ)."""
    sock = transport.get_extra_info("socket")
    queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
    return transport.get_write_buffer_size() + int.from_bytes(queued, sys.byteorder)


async def post_stream(path: str, token: str, body: bytes) -> socket.socket:
    """POST a streamed /v1/chat request to relay's unix socket at `path`, as nginx does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, path)
    head = (
        f"POST /v1/chat HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode() + body)
    return sock


async def stall_at(sock: socket.socket, marker: bytes) -> bytes:
    """Read until `marker` has arrived, then take no more bytes; what was read."""
    loop, received = asyncio.get_running_loop(), b""
    while marker not in received[-65536 - len(marker) :]:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout=20)
        assert chunk, received[-200:]
        received += chunk
    return received


async def read_to_end(sock: socket.socket) -> bytes:
    """What is left to read on `sock` until relay closes or resets it."""
    loop, rest = asyncio.get_running_loop(), b""
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout=20):
            rest += chunk
    except ConnectionResetError:
        pass
    return rest


async def test_a_client_that_stops_reading_at_the_last_event_is_cut_off_too(
    make_client, make_settings, database_url, simulator, monkeypatch, caplog
):
    # message.done carries the whole answer: more than the kernel holds for a client
    # that stops reading as it begins. Its write waits for the client like a delta's,
    # so it has the same deadline. On a unix socket (relay behind nginx) nothing else
    # bounds it: the kernel's TCP_USER_TIMEOUT, which aiohttp-sse sets, is TCP's.
    # Only that write's deadline is made short, and only once the client has taken every
    # delta: at 0.5 s for the deltas too, a loaded machine's pause cut the stream before
    # its last event.
    transports: list[asyncio.Transport] = []
    deadlines: list[float] = []
    end = HashedEventSource.end

    async def end_soon(self: HashedEventSource, final: bytes) -> None:
        deadlines.append(self.send_seconds)
        for _ in range(2000):  # the client reads on until the last event begins
            if not unread(transports[-1]):
                break
            await asyncio.sleep(0.01)
        self.send_seconds = 0.5
        await end(self, final)

    async def keep_transport(request: web.Request, response: web.StreamResponse) -> None:
        assert request.transport is not None
        transports.append(request.transport)

    monkeypatch.setattr(HashedEventSource, "end", end_soon)
    caplog.set_level(logging.INFO, logger="relay.access")
    settings = make_settings(rate_limits=False)
    app = create_app(settings)
    app.on_response_prepare.extend((small_send_buffer, keep_transport))
    http = await make_client(settings, app)
    with tempfile.TemporaryDirectory(prefix="relay-") as directory:
        path = f"{directory}/relay.sock"  # AF_UNIX paths are short; pytest's tmp_path may not be
        await web.UnixSite(http.server.runner, path).start()
        client, token = await client_with_token(http)
        simulator.config.tokens = 40_000
        sock = await post_stream(path, token, orjson.dumps({"message": "Hi", "stream": True}))
    in_flight = app[IN_FLIGHT]
    try:
        received = await stall_at(sock, b"event: message.done")
        for _ in range(400):  # until relay's handler has ended
            if in_flight.requests == 0:
                break
            await asyncio.sleep(0.05)
        assert in_flight.requests == 0, "relay still waits on a client that takes nothing"
        received += await read_to_end(sock)
    finally:
        sock.close()
    assert deadlines == [pipe.SEND_SECONDS]  # the deltas' deadline, until made short
    assert not received.endswith(b"0\r\n\r\n")  # the stream never ended
    [line] = [r for r in caplog.records if r.name == "relay.access" and r.route == "/v1/chat"]
    # Logged as any client that left mid-stream: the status it was sent, what was written.
    assert line.status == 200 and line.bytes_out >= len(received)
    rows = await stored_messages(database_url, client["id"])
    # Committed before its last event was sent, the answer stays as the receipt signs it.
    assert rows[-1]["status"] == "complete"
