"""How each answer ended, as its provider said (`finish_reason`), read back from history:
streamed or not, each choice its own, /v1/chat's too; null where the provider never said."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.services.turns import FINISH_REASON_CHARS
from tests.api_calls import bearer
from tests.history_calls import ask_in_one_conversation, relay_answered_by, stored_messages
from tests.scripted_provider import RecordingProvider, play, whole_answer

REASONS = ["stop", "length", "content_filter", "tool_calls"]
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
LONG = "x" * 1000
# What a provider sends as its finish_reason, by question: junk among them.
SENT: dict[str, Any] = {
    **{reason: reason for reason in REASONS},
    "long": LONG,
    "nul": "st\x00op",
    "number": 5,
    "object": {"reason": "stop"},
}


def _chunk(choices: list[dict[str, Any]]) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return b"data: " + orjson.dumps({**body, "choices": choices}) + b"\n\n"


def _message(reason: Any, *, streamed: bool = False) -> dict[str, Any]:
    """What a choice ending with `reason` says: a tool call for "tool_calls", else words."""
    if reason == "tool_calls":
        call = {"index": 0, **CALL} if streamed else CALL
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": "words"}


def _script(reasons: list[Any], *, cut: bool = False) -> list[bytes]:
    """A stream whose choice i ends with reasons[i]; `cut`: it breaks off before any end."""
    said = [
        {"index": index, "delta": _message(reason, streamed=True)}
        for index, reason in enumerate(reasons)
    ]
    if cut:
        return [_chunk(said)]
    ends = [{"index": i, "delta": {}, "finish_reason": reason} for i, reason in enumerate(reasons)]
    return [_chunk(said), _chunk(ends), b"data: [DONE]\n\n"]


class Provider(RecordingProvider):
    """Ends its answer to the question "<key>" with SENT[key] (to each of its `n`
    choices, SENT of "<key>,<key>" in order); "cut" breaks its stream off."""

    async def reply(self, request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        question = asked["messages"][-1]["content"]
        reasons = [SENT.get(key, "stop") for key in question.split(",")]
        if asked.get("stream"):
            return await play(request, _script(reasons, cut=question == "cut"), asyncio.Event())
        return whole_answer(*map(_message, reasons), finish_reasons=reasons)


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream):
    return await relay_answered_by(Provider().answer, make_client, make_settings, provider_upstream)


def finish_reasons(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["finish_reason"] for m in messages if m["role"] == "assistant"]


async def test_each_answer_is_read_back_with_its_finish_reason(relay):
    """Streamed or not, an answer that stopped, hit max_tokens, was filtered or called
    tools says so in history, beside a status that is `complete` for all of them; a
    question has `"finish_reason": null`."""
    http, _, token = relay
    asked = [(reason, {"stream": stream}) for stream in (False, True) for reason in REASONS]
    conversation = await ask_in_one_conversation(http, token, asked)
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert finish_reasons(page["data"]) == REASONS * 2
    assert {m["status"] for m in page["data"]} == {"complete"}
    assert {m["finish_reason"] for m in page["data"] if m["role"] == "user"} == {None}
    read = await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert finish_reasons((await read.json())["messages"]) == REASONS * 2
    found = await http.get("/v1/history/search", params={"q": "length"}, headers=bearer(token))
    data = (await found.json())["data"]
    assert [(m["role"], m["finish_reason"]) for m in data] == [("user", None)] * 2
    found = await http.get("/v1/history/search", params={"q": "words"}, headers=bearer(token))
    assert sorted(finish_reasons((await found.json())["data"])) == sorted(
        ["stop", "length", "content_filter"] * 2
    )


async def test_each_choice_keeps_its_own_finish_reason(relay):
    """With `n` > 1 each choice is a row of its own, and ends as that choice did."""
    http, _, token = relay
    asked = [("stop,length", {"n": 2, "stream": stream}) for stream in (False, True)]
    await ask_in_one_conversation(http, token, asked)
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    answers = [(m["choice"], m["finish_reason"]) for m in page["data"] if m["role"] == "assistant"]
    assert answers == [(0, "stop"), (1, "length")] * 2


async def test_a_cut_stream_has_no_finish_reason(relay):
    """A stream that broke off before its provider said how it ended: `cut`, and null."""
    http, _, token = relay
    await ask_in_one_conversation(http, token, [("cut", {"stream": True})])
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert [(m["status"], m["finish_reason"]) for m in page["data"]][-1] == ("cut", None)


async def test_a_providers_junk_finish_reason_does_not_fail_the_write(relay, database_url):
    """An over-long finish_reason is kept cut short, one holding NUL without it, and one
    that is no string is none: the answers are stored, not refused with the batch."""
    http, client_id, token = relay
    junk = ["long", "nul", "number", "object"]
    asked = [(key, {"stream": stream}) for stream in (False, True) for key in junk]
    await ask_in_one_conversation(http, token, asked)
    kept = [LONG[:FINISH_REASON_CHARS], "stop", None, None]
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert finish_reasons(page["data"]) == kept * 2
    stored = await stored_messages(database_url, client_id)
    assert finish_reasons(stored) == kept * 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_v1_chat_says_and_records_how_its_answer_ended(relay, stream):
    """/v1/chat streams from the provider: its answer (the body, or `message.done`) says
    why it ended, and is kept with the reason too."""
    http, _, token = relay
    response = await http.post(
        "/v1/chat",
        json={"message": "length", "model": "m", "stream": stream},
        headers=bearer(token),
    )
    assert response.status == 200, await response.text()
    if stream:
        done = (await response.text()).split("event: message.done\ndata: ")[1].split("\n")[0]
        answer = orjson.loads(done)
    else:
        answer = await response.json()
    assert answer["message"]["finish_reason"] == "length"
    page = await (await http.get("/v1/history", headers=bearer(token))).json()
    assert [(m["role"], m["finish_reason"]) for m in page["data"]] == [
        ("user", None),
        ("assistant", "length"),
    ]
