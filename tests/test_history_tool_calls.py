"""Answers made of tool calls, read back as OpenAI gives them (content null, not ""),
and what POST /v1/chat's context makes of them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from tests.api_calls import bearer
from tests.history_calls import ask_in_one_conversation, relay_answered_by, stored_messages
from tests.scripted_provider import RecordingProvider, play, whole_answer

CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
# The provider's answer to each question: its message, as OpenAI sends it.
ANSWERS: dict[str, dict[str, Any]] = {
    "call it": {"role": "assistant", "content": None, "tool_calls": [CALL]},
    "say and call it": {"role": "assistant", "content": "Looking.", "tool_calls": [CALL]},
    "say nothing": {"role": "assistant", "content": ""},
}

STREAMED_OK = [
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"ok"},"finish_reason":null}]}\n\n',
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


class Provider(RecordingProvider):
    """Answers each question as ANSWERS says ("ok" otherwise)."""

    async def reply(self, request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        if asked.get("stream"):  # /v1/chat's
            return await play(request, STREAMED_OK, asyncio.Event())
        question = asked["messages"][-1]["content"]
        return whole_answer(ANSWERS.get(question, {"role": "assistant", "content": "ok"}))


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream, provider):
    return await relay_answered_by(provider.answer, make_client, make_settings, provider_upstream)


async def ask_all(http, token) -> str:
    """Every question of ANSWERS, in one conversation, through /v1/chat/completions."""
    return await ask_in_one_conversation(http, token, [(question, {}) for question in ANSWERS])


def answers(messages: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(m["content"], m["tool_calls"]) for m in messages if m["role"] == "assistant"]


SERVED = [(None, [CALL]), ("Looking.", [CALL]), ("", None)]


async def test_an_answer_of_tool_calls_alone_is_read_back_with_content_null(relay, database_url):
    """OpenAI's assistant message of tool calls has `"content": null`; one that said
    nothing and called nothing has "" (so do the questions, as they were sent)."""
    http, client_id, token = relay
    conversation = await ask_all(http, token)
    # Stored as "" (the column is NOT NULL): null is what it is served as.
    stored = await stored_messages(database_url, client_id)
    assert [row["content"] for row in stored if row["role"] == "assistant"] == ["", "Looking.", ""]
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert answers(page["data"]) == SERVED
    assert [m["content"] for m in page["data"] if m["role"] == "user"] == list(ANSWERS)
    read = await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert answers((await read.json())["messages"]) == SERVED
    # A query of only a word left out matches messages without words too; newest first.
    found = await http.get("/v1/history/search", params={"q": "-zzz"}, headers=bearer(token))
    assert answers((await found.json())["data"]) == SERVED[::-1]


async def test_chat_context_leaves_an_answer_of_tool_calls_alone_out(relay, provider):
    """The provider is never sent an assistant message without text (some refuse one,
    and tool calls without their results OpenAI refuses): such an answer is left out
    with its question, and an answer with text goes as its text."""
    http, _, token = relay
    conversation = await ask_all(http, token)
    body = {"message": "and now?", "model": "m", "conversation_id": conversation}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    assert response.status == 200, await response.text()
    assert provider.seen[-1] == [
        {"role": "user", "content": "say and call it"},
        {"role": "assistant", "content": "Looking."},
        {"role": "user", "content": "and now?"},
    ]
