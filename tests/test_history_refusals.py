"""Refusals (OpenAI's structured outputs: `"content": null` beside `"refusal"`, or
`delta.refusal` pieces) read back from history as OpenAI gives them, and what POST
/v1/chat's context makes of them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.api_calls import bearer
from tests.history_calls import (
    ask_in_one_conversation,
    execute,
    relay_answered_by,
    stored_messages,
)
from tests.scripted_provider import RecordingProvider, play, whole_answer

NO = "I can't help with that."
REFUSED = {"role": "assistant", "content": None, "refusal": NO}
OK = {"role": "assistant", "content": "ok", "refusal": None}


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return b"data: " + orjson.dumps({**body, "choices": [choice]}) + b"\n\n"


def _stream(first: dict[str, Any], *pieces: dict[str, Any]) -> list[bytes]:
    start = _chunk({"role": "assistant", **first})
    return [start, *map(_chunk, pieces), _chunk({}, "stop"), b"data: [DONE]\n\n"]


# As OpenAI streams a refusal: content null, then the refusal in pieces.
STREAMED_REFUSAL = _stream(
    {"content": None, "refusal": ""}, {"refusal": "I can't "}, {"refusal": "help with that."}
)
STREAMED_OK = _stream({"content": ""}, {"content": "ok"})

# Each question, in order, with how it is asked: streamed or not, and its `n`.
QUESTIONS = [
    ("refuse", False, 1),
    ("refuse streamed", True, 1),
    ("answer", False, 1),
    ("refuse the second", False, 2),  # choice 0 answers, choice 1 refuses
]


class Provider(RecordingProvider):
    """Refuses the questions that ask for it, answers "ok" otherwise."""

    async def reply(self, request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        question = asked["messages"][-1]["content"]
        if asked.get("stream"):  # "refuse streamed", or /v1/chat's
            script = STREAMED_REFUSAL if question == "refuse streamed" else STREAMED_OK
            return await play(request, script, asyncio.Event())
        said = [REFUSED if question == "refuse" else OK]
        return whole_answer(*said, *([REFUSED] if asked.get("n") == 2 else []))


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream, provider):
    return await relay_answered_by(provider.answer, make_client, make_settings, provider_upstream)


async def ask_all(http, token) -> str:
    """Every question of QUESTIONS, in one conversation, through /v1/chat/completions."""
    asked = [(question, {"stream": stream, "n": n}) for question, stream, n in QUESTIONS]
    return await ask_in_one_conversation(http, token, asked)


def answers(messages: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(m["content"], m["refusal"]) for m in messages if m["role"] == "assistant"]


# The answers to QUESTIONS, in order, as OpenAI gives them: (content, refusal).
SERVED = [(None, NO), (None, NO), ("ok", None), ("ok", None), (None, NO)]


async def test_a_refusal_is_read_back_as_openai_gives_it(relay, database_url):
    """A refusal, streamed or not, and of any choice, reads back with `"content": null`
    and its words in `refusal`; any other message has `"refusal": null`."""
    http, client_id, token = relay
    conversation = await ask_all(http, token)
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert answers(page["data"]) == SERVED
    assert [m["choice"] for m in page["data"] if m["role"] == "assistant"] == [
        None,
        None,
        None,
        0,
        1,
    ]
    questions = [m for m in page["data"] if m["role"] == "user"]
    assert [(m["content"], m["refusal"]) for m in questions] == [(q, None) for q, *_ in QUESTIONS]
    read = await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert answers((await read.json())["messages"]) == SERVED
    # The words are stored as the content too: the refusal is found by them.
    found = await http.get("/v1/history/search", params={"q": "help"}, headers=bearer(token))
    data = (await found.json())["data"]
    assert answers(data) == [(None, NO)] * 3
    assert all("<mark>help</mark>" in m["snippet"] for m in data)
    stored = await stored_messages(database_url, client_id)
    assert [(m["content"], m["refusal"]) for m in stored if m["role"] == "assistant"] == [
        (NO, NO),
        (NO, NO),
        ("ok", None),
        ("ok", None),
        (NO, NO),
    ]


async def test_a_refusal_stored_by_an_older_relay_reads_as_text(relay, database_url):
    """An instance from before refusals were kept apart (during a rolling upgrade, or
    rows stored before it) wrote a refusal's words as content alone: that is all there
    is to read, so it reads as an answer's text, as it did."""
    http, client_id, token = relay
    await ask_all(http, token)
    await execute(
        database_url,
        "UPDATE messages SET refusal = NULL WHERE client_id = %s",
        (client_id,),
    )
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert answers(page["data"]) == [(NO, None), (NO, None), ("ok", None), ("ok", None), (NO, None)]


async def test_chat_context_sends_a_refusal_as_the_answers_text(relay, provider):
    """POST /v1/chat showed its user a refusal as the answer's words (`message.content`):
    the provider is sent it so, as plain text every provider takes, so that the model
    knows what it declined when asked why (OpenAI's `refusal` field others refuse)."""
    http, _, token = relay
    conversation = await ask_all(http, token)
    body = {"message": "why not?", "model": "m", "conversation_id": conversation}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    assert response.status == 200, await response.text()
    assert provider.seen[-1] == [
        {"role": "user", "content": "refuse"},
        {"role": "assistant", "content": NO},
        {"role": "user", "content": "refuse streamed"},
        {"role": "assistant", "content": NO},
        {"role": "user", "content": "answer"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "refuse the second"},
        {"role": "assistant", "content": "ok"},  # choice 0: a conversation goes on from it
        {"role": "user", "content": "why not?"},
    ]
