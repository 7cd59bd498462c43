"""A fake provider's stream played from a script: its bytes, pauses and hang-ups in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

HANG = "hang"  # the provider sends nothing more and keeps its body open


async def play(
    request: web.Request, script: Sequence[bytes | float | str], ended: asyncio.Event
) -> web.StreamResponse:
    """`script` as the provider's event stream: bytes are written, a float is a pause of
    that many seconds, and a HANG holds the body open until `ended`."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for step in script:
        if step == HANG:
            await ended.wait()
            return response
        if isinstance(step, float):
            await asyncio.sleep(step)
        elif isinstance(step, bytes):
            await response.write(step)
    await response.write_eof()
    return response


def sent(script: Sequence[bytes | float | str]) -> bytes:
    """The bytes `script` sends."""
    return b"".join(step for step in script if isinstance(step, bytes))


class RecordingProvider:
    """A provider that keeps the messages relay sent it (`seen`), then answers as its
    subclass's `reply` says."""

    def __init__(self) -> None:
        self.seen: list[list[dict[str, Any]]] = []

    async def answer(self, request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        self.seen.append(asked["messages"])
        return await self.reply(request, asked)

    async def reply(self, request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        raise NotImplementedError


def whole_answer(*messages: dict[str, Any], finish_reasons: Sequence[Any] = ()) -> web.Response:
    """A non-streamed chat completion whose choices say `messages`, in order, as OpenAI
    sends one (its finish_reason "tool_calls" for a message that calls tools), or ending
    as `finish_reasons` say, in order."""
    endings = finish_reasons or ["tool_calls" if "tool_calls" in m else "stop" for m in messages]
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": index, "message": message, "finish_reason": ending}
            for index, (message, ending) in enumerate(zip(messages, endings, strict=True))
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return web.json_response(body, dumps=lambda value: orjson.dumps(value).decode())
