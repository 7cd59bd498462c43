"""Answers of several choices: the provider's bytes pass as they come, and only an answer
that is over (every choice it asked for finished) is ended by a short silence. One still
open when its stream ends is cut."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.upstreams import reply
from relay.upstreams.config import Upstream
from relay.upstreams.forwarder import create_session, open_provider_response
from relay.upstreams.observer import StreamObserver
from relay.upstreams.pipe import PipeResult, pipe_stream
from relay.upstreams.routing import Route
from tests.api_calls import bearer, client_with_token
from tests.history_calls import stored_messages
from tests.scripted_provider import HANG, play
from tests.scripted_provider import sent as played

SILENCE = 0.1  # FINISHED_SILENCE_SECONDS, shortened
PAUSE = 0.3  # a provider's pause: longer than SILENCE, shorter than IDLE
IDLE = 0.6  # the upstream's timeout (between bytes)


def chunk(index: int, content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
)
DONE = b"data: [DONE]\n\n"
TWO_BEGUN = [chunk(0, "A"), chunk(1, "B"), chunk(0, finish="stop")]
SCRIPTS: dict[str, list[Any]] = {
    # Choice 1 still thinking, silent, after choice 0 finished.
    "two-paused": [*TWO_BEGUN, PAUSE, chunk(1, "C"), chunk(1, finish="stop"), DONE],
    "usage-soon": [chunk(0, "A"), chunk(0, finish="stop"), SILENCE / 3, USAGE, DONE],
    "two-open-silent": [*TWO_BEGUN, HANG],
    "two-open-closed": TWO_BEGUN,  # then the body ends
    "two-finished-silent": [*TWO_BEGUN, chunk(1, finish="stop"), HANG],
    "usage-never": [chunk(0, "A"), chunk(0, finish="stop"), HANG],
}


async def play_model(request: web.Request, ended: asyncio.Event) -> web.StreamResponse:
    """The script the request's model names, as the provider's stream."""
    return await play(request, SCRIPTS[(await request.json())["model"]], ended)


@pytest.fixture
async def provider(aiohttp_server):
    ended = asyncio.Event()  # the test is over: a hanging provider may end

    async def chat(request: web.Request) -> web.StreamResponse:
        return await play_model(request, ended)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    yield await aiohttp_server(app)
    ended.set()


@pytest.fixture(autouse=True)
def short_silence(monkeypatch):
    monkeypatch.setattr(reply, "FINISHED_SILENCE_SECONDS", SILENCE)


class Client:
    def __init__(self) -> None:
        self.received = bytearray()

    async def write(self, data: bytes) -> None:
        self.received += data


async def relay(provider, model: str, **asked: Any) -> tuple[bytes, PipeResult, str | None]:
    """What a client receives of `model`'s stream (the held-back end too), how it went,
    and the code of the error event a cut stream ends with."""
    upstream = Upstream("fake", str(provider.make_url("/v1")), {model: model}, timeout_s=IDLE)
    route = Route(model, upstream, model)
    request = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    request.update(asked)
    client, observer = Client(), StreamObserver.for_request(request)
    async with (
        create_session() as session,
        open_provider_response(
            session, route, orjson.dumps(request), stream=True, longest=30
        ) as answer,
    ):
        await answer.first()
        result = await pipe_stream(client, answer, observer, lambda: None, route)
        cut = answer.cut_error().code if result.status == "cut" else None
    return bytes(client.received) + result.final, result, cut


def sent(model: str) -> bytes:
    return played(SCRIPTS[model])


async def test_a_choice_paused_after_another_finished_still_reaches_the_client(provider):
    received, result, _ = await relay(provider, "two-paused", n=2)
    assert received == sent("two-paused")
    assert result.status == "complete"
    assert result.observer.choice_text(1) == "BC"


async def test_a_usage_chunk_soon_after_the_end_is_kept(provider):
    usage = {"include_usage": True}
    received, result, _ = await relay(provider, "usage-soon", stream_options=usage)
    assert received == sent("usage-soon")
    assert result.status == "complete"
    assert result.observer.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@pytest.mark.parametrize(
    "model,code",
    [("two-open-silent", "upstream_timeout"), ("two-open-closed", "upstream_cut")],
)
async def test_a_stream_ending_with_a_choice_open_is_cut(provider, model, code):
    received, result, cut = await relay(provider, model, n=2)
    assert received == sent(model)
    assert result.status == "cut"
    assert cut == code


async def test_a_provider_silent_after_every_choice_finished_ends_the_answer_soon(provider):
    loop = asyncio.get_running_loop()
    started = loop.time()
    received, result, _ = await relay(provider, "two-finished-silent", n=2)
    assert loop.time() - started < IDLE  # the short deadline, not the idle timeout
    assert received == sent("two-finished-silent")
    assert result.status == "complete"


@pytest.mark.parametrize("asked", [False, True], ids=["not-asked", "asked"])
async def test_an_answer_whose_usage_never_comes_ends_soon_and_complete(provider, asked):
    """Some providers never send the usage chunk, asked for or not: a finished answer is
    not held for it past the short silence, and is complete without it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    options = {"include_usage": asked}
    received, result, _ = await relay(provider, "usage-never", stream_options=options)
    assert loop.time() - started < IDLE
    assert received == sent("usage-never")
    assert result.status == "complete" and result.observer.usage is None


@pytest.mark.parametrize(
    "request_,choices",
    [
        ({"n": 2}, 2),
        ({"n": 3, "stream_options": {"include_usage": True}}, 3),
        ({}, 1),
        ({"n": None}, 1),
        ({"n": 0}, 1),
        ({"n": -3}, 1),
        ({"n": True}, 1),
        ({"n": 2.0}, 1),
        ({"n": "2"}, 1),
    ],
)
def test_the_observer_awaits_every_choice_the_request_asked_for(request_, choices):
    observer = StreamObserver.for_request(request_)
    for index in range(choices):
        assert not observer.all_finished
        observer.feed(chunk(index, finish="stop"))
    assert observer.all_finished


async def test_through_relay_a_paused_choice_arrives_and_is_stored_whole(
    make_client, make_settings, provider_upstream, database_url
):
    async def chat(request: web.Request) -> web.StreamResponse:
        return await play_model(request, asyncio.Event())

    upstream = await provider_upstream(chat, "choices", models={"two-paused": "two-paused"})
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    client, token = await client_with_token(http)
    body = {"model": "two-paused", "messages": [{"role": "user", "content": "Hi"}]}
    body.update(stream=True, n=2)
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert await response.read() == sent("two-paused")
    rows = await stored_messages(database_url, client["id"])
    assert [(row["role"], row["content"], row["status"], row["choice"]) for row in rows] == [
        ("user", "Hi", "complete", None),
        ("assistant", "A", "complete", 0),
        ("assistant", "BC", "complete", 1),  # the paused choice, whole
    ]
