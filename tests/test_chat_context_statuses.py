"""Which stored answers POST /v1/chat gives back as context: not one the client was
told had failed (cut or failed), but one the client stopped itself (cancelled)."""

import asyncio

import pytest

from relay.simulator import completion_text
from tests.api_calls import bearer, client_with_token
from tests.history_calls import CONVERSATION, stored_messages


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def native(http, token, message, **fields):
    body = {"message": message, **fields}
    return await http.post("/v1/chat", json=body, headers=bearer(token))


async def answer_statuses(database_url, client_id):
    rows = await stored_messages(database_url, client_id)
    return [row["status"] for row in rows if row["role"] == "assistant"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_answer_the_provider_cut_is_left_out_with_its_question(
    http, database_url, simulator, stream
):
    client, token = await client_with_token(http)
    first = await native(http, token, "Q0")
    conversation = first.headers[CONVERSATION]
    simulator.config.cut_after = 2
    cut = await native(http, token, "Q1", conversation_id=conversation, stream=stream)
    # The client was told the answer failed: a 502, or an error event ending the stream.
    if stream:
        assert b"event: error\n" in await cut.read()
    else:
        assert cut.status == 502
    assert await answer_statuses(database_url, client["id"]) == ["complete", "cut"]
    simulator.config.cut_after = None
    await native(http, token, "Q2", conversation_id=conversation)
    assert simulator.state.requests[-1].json()["messages"] == [
        {"role": "user", "content": "Q0"},
        {"role": "assistant", "content": (await first.json())["message"]["content"]},
        {"role": "user", "content": "Q2"},
    ]


async def test_an_answer_the_client_stopped_stays_in_the_context(http, database_url, simulator):
    # The user saw that text, and may well ask about it.
    client, token = await client_with_token(http)
    simulator.config.tokens, simulator.config.token_delay = 500, 0.05
    response = await native(http, token, "Tell me a long story", stream=True)
    conversation = response.headers[CONVERSATION]
    received = b""
    while b"message.delta" not in received:
        received += await response.content.readany()
    response.close()
    for _ in range(200):
        if await answer_statuses(database_url, client["id"]) == ["cancelled"]:
            break
        await asyncio.sleep(0.05)
    partial = (await stored_messages(database_url, client["id"]))[-1]["content"]
    assert partial and completion_text(500).startswith(partial)
    simulator.config.tokens, simulator.config.token_delay = 4, 0
    await native(http, token, "Why did it stop?", conversation_id=conversation)
    assert simulator.state.requests[-1].json()["messages"] == [
        {"role": "user", "content": "Tell me a long story"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Why did it stop?"},
    ]
