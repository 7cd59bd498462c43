"""At DEBUG, nothing a user wrote to a model reaches the logs: prompts, system text,
tool arguments, conversation titles."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from relay.logs import JsonFormatter, TextFormatter
from tests.api_calls import bearer, client_with_token

CANARY = "c4n4ry-9f31-do-not-log"


@pytest.fixture
def captured() -> Iterator[list[io.StringIO]]:
    """Every record from every logger, formatted both as JSON lines and as text."""
    streams = [io.StringIO(), io.StringIO()]
    handlers = []
    for stream, formatter in zip(streams, (JsonFormatter(), TextFormatter()), strict=True):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
    root = logging.getLogger()
    level = root.level
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield streams
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


def chat_body(stream: bool) -> dict:
    return {
        "model": "gpt-sim",
        "stream": stream,
        "user": f"user-{CANARY}",
        "messages": [
            {"role": "system", "content": f"You are {CANARY} the system."},
            {"role": "user", "content": [{"type": "text", "text": f"prompt {CANARY}"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "lookup",
                            "arguments": orjson.dumps({"query": CANARY}).decode(),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": f"result {CANARY}"},
            {"role": "user", "content": f"and again {CANARY}"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": f"looks up {CANARY}",
                    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
                },
            }
        ],
    }


async def test_chat_content_never_reaches_the_logs(http, captured):
    _, token = await client_with_token(http, name=f"client {CANARY}")
    headers = bearer(token)
    answered = await http.post("/v1/chat/completions", json=chat_body(False), headers=headers)
    assert answered.status == 200, await answered.text()
    streamed = await http.post("/v1/chat/completions", json=chat_body(True), headers=headers)
    assert streamed.status == 200
    assert (await streamed.read()).rstrip().endswith(b"data: [DONE]")
    # Refusals carry the same content through other code paths.
    unknown = {**chat_body(False), "model": f"model-{CANARY}"}
    assert (await http.post("/v1/chat/completions", json=unknown, headers=headers)).status == 404
    broken = b'{"model": "gpt-sim", "messages": [{"content": "' + CANARY.encode()
    response = await http.post(
        "/v1/chat/completions",
        data=broken,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status == 400

    json_lines, text_lines = (stream.getvalue() for stream in captured)
    assert "/v1/chat/completions" in json_lines, "the requests were not logged at all"
    for output in (json_lines, text_lines):
        leaked = [line for line in output.splitlines() if CANARY in line]
        assert not leaked, "\n".join(leaked[:5])


async def test_conversation_titles_and_history_never_reach_the_logs(http, captured):
    _, token = await client_with_token(http)
    headers = bearer(token)
    chat = {"message": f"title {CANARY}", "system": f"system {CANARY}", "model": "gpt-sim"}
    answered = await http.post("/v1/chat", json=chat, headers=headers)
    assert answered.status == 200, await answered.text()
    conversation_id = (await answered.json())["conversation_id"]
    streamed = await http.post("/v1/chat", json={**chat, "stream": True}, headers=headers)
    assert streamed.status == 200
    await streamed.read()

    listing = await (await http.get("/v1/conversations", headers=headers)).json()
    assert any(CANARY in (item.get("title") or "") for item in listing["data"]), listing
    for path, params in (
        (f"/v1/conversations/{conversation_id}", {}),
        ("/v1/history/search", {"q": CANARY}),
        ("/v1/history", {"conversation_id": conversation_id}),
    ):
        response = await http.get(path, params=params, headers=headers)
        assert response.status == 200, await response.text()
        assert CANARY in await response.text()
    deleted = await http.delete(f"/v1/conversations/{conversation_id}", headers=headers)
    assert deleted.status == 204

    json_lines, text_lines = (stream.getvalue() for stream in captured)
    assert "/v1/chat" in json_lines, "the requests were not logged at all"
    for output in (json_lines, text_lines):
        leaked = [line for line in output.splitlines() if CANARY in line]
        assert not leaked, "\n".join(leaked[:5])
