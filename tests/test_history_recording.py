"""Every chat completion lands in history: the new turn, the answer, its status and usage."""

import asyncio
import dataclasses
import uuid

import orjson

from relay.appkeys import ANSWER_RECORDER, DATABASE, HISTORY
from relay.errors import AuthenticationError
from relay.metrics import HISTORY_BATCH_SIZE
from relay.services.turns import MAX_TURN_MESSAGES
from relay.simulator import completion_text
from relay.stores.clients import ClientStore
from relay.upstreams.completion import CompletionSummary
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token
from tests.history_calls import (
    CONVERSATION,
    chat,
    execute,
    query,
    recorded_answer,
    refuse_history_writes,
    stored_messages,
)


async def test_answer_and_its_turn_are_stored_in_a_new_conversation(http, database_url, simulator):
    client, token = await client_with_token(http)
    response = await chat(http, token, "What is the capital of France?")
    assert response.status == 200
    conversation = response.headers[CONVERSATION]
    body = await response.json()
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    user, assistant = rows
    assert user["content"] == "What is the capital of France?"
    assert assistant["content"] == completion_text(simulator.config.tokens)
    assert assistant["model"] == "gpt-sim"
    assert assistant["completion_tokens"] == body["usage"]["completion_tokens"]
    assert assistant["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert assistant["request_id"] == response.headers["X-Request-Id"]
    assert assistant["latency_ms"] > 0
    assert {str(row["conversation_id"]) for row in rows} == {conversation}
    [stored] = await query(
        database_url, "SELECT * FROM conversations WHERE id = %s", (conversation,)
    )
    assert stored["title"] == "What is the capital of France?"
    assert str(stored["client_id"]) == client["id"]


async def test_streamed_answer_is_stored_as_the_text_the_client_read(http, database_url, simulator):
    client, token = await client_with_token(http)
    response = await chat(http, token, stream=True, stream_options={"include_usage": True})
    raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert CONVERSATION in response.headers
    rows = await stored_messages(database_url, client["id"])
    assert rows[-1]["role"] == "assistant"
    assert rows[-1]["content"] == completion_text(simulator.config.tokens)
    assert rows[-1]["completion_tokens"] == simulator.config.tokens
    assert rows[-1]["status"] == "complete"


async def test_with_n_choices_history_keeps_each_as_a_row_of_its_own(http, database_url, simulator):
    # Every answer the client received is in history: choice 0, the one a conversation
    # goes on from, first, with the usage (every choice's, as the provider bills
    # them), then the others, numbered.
    client, token = await client_with_token(http)
    tokens = simulator.config.tokens
    texts = [completion_text(tokens, choice=index) for index in range(3)]
    assert len(set(texts)) == 3
    for stream in (False, True):
        response = await chat(http, token, n=3, stream=stream)
        assert response.status == 200
        await response.read()
        *_, first, second, third = await stored_messages(database_url, client["id"])
        answers = [first, second, third]
        assert [(row["role"], row["status"]) for row in answers] == [("assistant", "complete")] * 3
        assert [row["content"] for row in answers] == texts
        assert [row["choice"] for row in answers] == [0, 1, 2]
        assert second["completion_tokens"] is None and third["prompt_tokens"] is None
        if not stream:
            assert first["completion_tokens"] == 3 * tokens

    polled = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert [message["choice"] for message in polled["data"]][-3:] == [0, 1, 2]
    response = await chat(http, token)  # one answer asked for: no choice to number
    await response.read()
    *_, question, answer = await stored_messages(database_url, client["id"])
    assert question["choice"] is None and answer["choice"] is None


async def test_a_conversation_goes_on_from_choice_0(http, simulator):
    _, token = await client_with_token(http)
    response = await chat(http, token, "Pick one", n=3)
    conversation = response.headers[CONVERSATION]
    await response.read()
    answered = await http.post(
        "/v1/chat",
        json={"message": "Go on", "conversation_id": conversation},
        headers=bearer(token),
    )
    assert answered.status == 200, await answered.text()
    assert simulator.state.requests[-1].json()["messages"] == [
        {"role": "user", "content": "Pick one"},
        {"role": "assistant", "content": completion_text(simulator.config.tokens)},
        {"role": "user", "content": "Go on"},
    ]


async def test_a_prefill_ending_the_request_leaves_the_question_in_the_turn(http, database_url):
    # An assistant message that ends the request is the start of the answer, not an
    # earlier answer: the question before it is this request's turn.
    client, token = await client_with_token(http)
    asked = [("system", "Be brief."), ("user", "Write a poem about cats")]
    prefill = {"role": "assistant", "content": "Roses are"}
    messages = [{"role": role, "content": content} for role, content in asked]
    assert (await chat(http, token, messages=[*messages, prefill])).status == 200
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["content"]) for row in rows[:-1]] == asked
    assert rows[-1]["role"] == "assistant"


async def test_a_conversation_continues_with_only_the_new_turn(http, database_url):
    client, token = await client_with_token(http)
    first = await chat(
        http,
        token,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
    )
    conversation = first.headers[CONVERSATION]
    answer = (await first.json())["choices"][0]["message"]["content"]
    second = await chat(
        http,
        token,
        conversation=conversation,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": answer},
            {
                "role": "user",
                "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "more?"}],
            },
        ],
    )
    assert second.status == 200
    assert second.headers[CONVERSATION] == conversation
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["content"]) for row in rows][:4] == [
        ("system", "Be brief."),
        ("user", "Hello"),
        ("assistant", answer),
        ("user", "And\nmore?"),
    ]
    assert len(rows) == 5
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
    assert {str(row["conversation_id"]) for row in rows} == {conversation}
    [stored] = await query(
        database_url, "SELECT title FROM conversations WHERE id = %s", (conversation,)
    )
    assert stored["title"] == "Hello"


async def test_a_conversation_of_another_client_is_404_and_nothing_is_forwarded(http, simulator):
    _, mine = await client_with_token(http)
    _, theirs = await client_with_token(http)
    conversation = (await chat(http, theirs)).headers[CONVERSATION]
    sent = len(simulator.state.requests)
    for bad in (conversation, "not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        response = await chat(http, mine, conversation=bad)
        await assert_error(response, 404, "conversation_not_found")
    assert len(simulator.state.requests) == sent


async def test_a_conversation_header_given_twice_with_different_ids_is_refused(http, simulator):
    _, token = await client_with_token(http)
    mine = (await chat(http, token)).headers[CONVERSATION]
    other = (await chat(http, token)).headers[CONVERSATION]
    sent = len(simulator.state.requests)
    for ids in ((mine, other), (mine, "00000000-0000-0000-0000-000000000000")):
        headers = [*bearer(token).items(), *((CONVERSATION, each) for each in ids)]
        body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "Hi"}]}
        response = await http.post("/v1/chat/completions", json=body, headers=headers)
        error = await assert_error(response, 400)
        assert error["param"] == CONVERSATION
    assert len(simulator.state.requests) == sent
    # The same id twice (a proxy repeating it, in another case) names one conversation.
    headers = [*bearer(token).items(), (CONVERSATION, mine), (CONVERSATION, mine.upper())]
    body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.headers[CONVERSATION] == mine


async def test_an_empty_conversation_header_is_refused_not_taken_for_a_new_conversation(
    http, simulator, database_url
):
    client, token = await client_with_token(http)
    sent = len(simulator.state.requests)
    for value in ("", "   "):
        headers = {**bearer(token), CONVERSATION: value}
        body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "Hi"}]}
        response = await http.post("/v1/chat/completions", json=body, headers=headers)
        error = await assert_error(response, 400)
        assert error["param"] == CONVERSATION
    assert len(simulator.state.requests) == sent
    assert await stored_messages(database_url, client["id"]) == []


async def test_store_false_and_clients_without_history_store_nothing(http, database_url):
    client, token = await client_with_token(http)
    response = await chat(http, token, store=False)
    assert response.status == 200
    assert CONVERSATION not in response.headers
    quiet, quiet_token = await client_with_token(http, store_history=False)
    response = await chat(http, quiet_token, stream=True)
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert await stored_messages(database_url, client["id"]) == []
    assert await stored_messages(database_url, quiet["id"]) == []
    assert await query(database_url, "SELECT * FROM conversations") == []


async def test_store_null_is_the_default_and_stores(http, database_url):
    # OpenAI's null means "not given".
    client, token = await client_with_token(http)
    response = await chat(http, token, store=None)
    assert response.status == 200
    assert CONVERSATION in response.headers
    assert len(await stored_messages(database_url, client["id"])) == 2


async def test_a_cut_stream_is_stored_as_cut(http, database_url, simulator):
    client, token = await client_with_token(http)
    simulator.config.cut_after = 3
    response = await chat(http, token, stream=True)
    raw = await response.read()
    assert b"[DONE]" not in raw
    rows = await stored_messages(database_url, client["id"])
    assert rows[-1]["status"] == "cut"
    assert rows[-1]["content"] == completion_text(3)


async def test_a_provider_failure_is_stored_as_failed(http, database_url, simulator):
    client, token = await client_with_token(http)
    simulator.config.error_status = 500
    response = await chat(http, token)
    assert response.status == 502
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "failed"),
    ]


async def test_a_client_that_leaves_mid_stream_is_stored_as_cancelled(
    http, database_url, simulator
):
    client, token = await client_with_token(http)
    simulator.config.token_delay = 0.05
    simulator.config.tokens = 200
    response = await chat(http, token, stream=True)
    await response.content.readany()
    response.close()
    for _ in range(200):
        if rows := await stored_messages(database_url, client["id"]):
            break
        await asyncio.sleep(0.05)
    assert rows[-1]["status"] == "cancelled"


async def test_nul_characters_do_not_stop_an_answer_being_stored(http, database_url):
    client, token = await client_with_token(http)
    response = await chat(http, token, "nul \u0000 inside")
    assert response.status == 200
    rows = await stored_messages(database_url, client["id"])
    assert rows[0]["content"] == "nul  inside"


async def test_what_a_provider_says_that_the_columns_cannot_hold_does_not_stop_the_answer(
    http, database_url
):
    # NUL inside tool call arguments (jsonb refuses it) and a token count past
    # PostgreSQL's integer: each alone would fail the answer's whole batch.
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"q":"a\x00b"}'},
    }
    summary = CompletionSummary(
        text="", tool_calls=[call], usage={"prompt_tokens": 3_000_000_000, "completion_tokens": 5}
    )
    await http.app[ANSWER_RECORDER].record(
        recorded_answer(http.app, owner, "odd values", summary=summary)
    )
    answer = (await stored_messages(database_url, client["id"]))[-1]
    assert answer["tool_calls"][0]["function"]["arguments"] == '{"q":"ab"}'
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (None, 5)


async def test_concurrent_answers_share_commits(make_client, make_settings, database_url):
    """Group commit: many answers, fewer transactions."""
    http = await make_client(make_settings(rate_limits=False))

    def commits() -> tuple[float, float]:
        [metric] = HISTORY_BATCH_SIZE.collect()
        samples = {s.name: s.value for s in metric.samples}
        return samples["relay_history_commit_batch_size_count"], samples[
            "relay_history_commit_batch_size_sum"
        ]

    client, token = await client_with_token(http)
    before_count, before_sum = commits()
    responses = await asyncio.gather(*(chat(http, token, f"question {n}") for n in range(60)))
    assert all(response.status == 200 for response in responses)
    after_count, after_sum = commits()
    assert after_sum - before_sum == 60
    assert after_count - before_count < 60
    rows = await stored_messages(database_url, client["id"])
    assert len(rows) == 120
    assert [row["seq"] for row in rows] == list(range(1, 121))


async def test_refused_write_ends_a_stream_with_an_error_instead_of_done(http, database_url):
    client, token = await client_with_token(http)
    await refuse_history_writes(database_url)
    response = await chat(http, token, stream=True)
    assert response.status == 200
    raw = await response.read()
    assert b"[DONE]" not in raw
    last = raw.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    error = orjson.loads(last[len(b"data: ") :])["error"]
    assert error["code"] == "history_unavailable"
    response = await chat(http, token)
    await assert_error(response, 503, "history_unavailable")
    assert await stored_messages(database_url, client["id"]) == []
    # Writes accepted again: the next answer is stored.
    await execute(database_url, "DROP TRIGGER refuse ON messages")
    response = await chat(http, token)
    assert response.status == 200
    assert len(await stored_messages(database_url, client["id"])) == 2


async def test_a_cut_stream_that_cannot_be_saved_still_ends_saying_it_was_cut(
    http, database_url, simulator
):
    # The client is told the provider broke off; that relay could not keep the broken
    # answer is only logged (README), not told in place of the provider's failure.
    _, token = await client_with_token(http)
    await refuse_history_writes(database_url)
    simulator.config.cut_after = 2
    raw = await (await chat(http, token, stream=True)).read()
    last = raw.strip().split(b"\n\n")[-1]
    assert orjson.loads(last[len(b"data: ") :])["error"]["code"] == "upstream_cut"


async def test_deleting_a_client_deletes_its_history(http, database_url):
    client, token = await client_with_token(http)
    await chat(http, token)
    response = await http.delete(f"/admin/clients/{client['id']}", headers=ADMIN)
    assert response.status in (200, 204)
    assert await stored_messages(database_url, client["id"]) == []
    assert await query(database_url, "SELECT * FROM conversations") == []


async def test_one_unwritable_answer_does_not_sink_the_others_in_its_batch(http, database_url):
    """Its client was deleted meanwhile: that answer fails, the rest of the batch commits."""
    client, _ = await client_with_token(http)
    stored_client = await ClientStore(http.app[DATABASE]).get(client["id"])
    gone = dataclasses.replace(stored_client, id=str(uuid.uuid4()))
    recorder = http.app[ANSWER_RECORDER]
    outcomes = await asyncio.gather(
        recorder.record(recorded_answer(http.app, stored_client, "kept 1")),
        recorder.record(recorded_answer(http.app, gone, "lost")),
        recorder.record(recorded_answer(http.app, stored_client, "kept 2")),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], AuthenticationError) and outcomes[1].code == "token_revoked"
    rows = await stored_messages(database_url, client["id"])
    assert [row["content"] for row in rows if row["role"] == "user"] == ["kept 1", "kept 2"]


async def test_tool_calls_tool_results_and_awkward_text_are_stored_as_given(http, database_url):
    client, _ = await client_with_token(http)
    owner = await ClientStore(http.app[DATABASE]).get(client["id"])
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"q": "a\\"b"}'},
        }
    ]
    answer = recorded_answer(
        http.app,
        owner,
        "tools",
        request={
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "it's 20\\u00b0C \\\\ «ok»"},
            ]
        },
    )
    answer.summary = dataclasses.replace(
        answer.summary, tool_calls=calls, finish_reason="tool_calls"
    )
    answer.latency_ms = 12.5
    [reserved_id], reserved_at = await http.app[HISTORY].reserve_messages(1)
    answer.message_id, answer.message_created_at = reserved_id, reserved_at
    await http.app[ANSWER_RECORDER].record(answer)
    tool, assistant = await stored_messages(database_url, client["id"])
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "call_1")
    assert tool["content"] == "it's 20\\u00b0C \\\\ «ok»"
    assert assistant["tool_calls"] == calls
    assert assistant["latency_ms"] == 12.5
    assert (assistant["id"], assistant["created_at"]) == (reserved_id, reserved_at)


async def test_a_turn_too_large_to_keep_is_refused_before_anything_is_sent(http, simulator):
    """One request's new turn of thousands of rows held its group commit past its
    timeout, failing every other client's answers in that batch: it is refused first."""
    _, token = await client_with_token(http)
    many = [{"role": "user", "content": "x"}] * (MAX_TURN_MESSAGES + 1)
    body = {"model": "gpt-sim", "messages": many}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    error = await assert_error(response, 400, "too_many_messages")
    assert error["param"] == "messages" and '"store": false' in error["message"]
    assert not simulator.state.requests
    # Earlier turns (answered before) do not count; nor does a request that keeps nothing.
    answered = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}] * 600
    asked = {"model": "gpt-sim", "messages": [*answered, {"role": "user", "content": "z"}]}
    unkept = {**body, "store": False}
    for fine in (asked, unkept):
        answer = await http.post("/v1/chat/completions", json=fine, headers=bearer(token))
        assert answer.status == 200, await answer.text()


async def test_participant_names_are_kept_and_shown(http):
    # OpenAI's `name` tells the people of one chat apart; a poller must see who said what.
    _, token = await client_with_token(http)
    response = await chat(
        http,
        token,
        messages=[
            {"role": "system", "content": "Moderate.", "name": "house_rules"},
            {"role": "user", "content": "Greetings, everyone", "name": "alice"},
            {"role": "user", "content": "Hello"},
        ],
    )
    assert response.status == 200, await response.text()
    conversation = response.headers[CONVERSATION]

    read = await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))
    polled = await http.get("/v1/history", headers=bearer(token))
    found = await http.get("/v1/history/search", params={"q": "greetings"}, headers=bearer(token))

    expected = [("system", "house_rules"), ("user", "alice"), ("user", None), ("assistant", None)]
    for messages in ((await read.json())["messages"], (await polled.json())["data"]):
        assert [(message["role"], message["name"]) for message in messages] == expected
    assert [message["name"] for message in (await found.json())["data"]] == ["alice"]
