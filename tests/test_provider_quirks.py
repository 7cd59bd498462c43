"""Real providers' quirks: a finish_reason on every chunk (empty, or "stop"), parallel tool
calls all at index 0, errors in a JSON list, a body opening with a BOM. The client gets
the whole answer as sent, and history keeps it as it was."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.simulator.completion import completion_body
from relay.upstreams import reply
from relay.upstreams.observer import StreamObserver
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import stored_messages
from tests.scripted_provider import HANG, play
from tests.scripted_provider import sent as played

SILENCE = 0.1  # FINISHED_SILENCE_SECONDS, shortened
PAUSE = 0.4  # a provider thinking mid-answer: longer than SILENCE, shorter than TIMEOUT
TIMEOUT = 1.0  # the upstream's timeout_s
DONE = b"data: [DONE]\n\n"


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def every_chunk_finished(reason: str) -> list[Any]:
    """SGLang (≤0.4.3) and older Ollama send `"finish_reason": ""` with every chunk, some
    Gemini relays `"stop"`: here with a pause mid-answer."""
    words = [chunk("Hel", reason), chunk("lo", reason), PAUSE, chunk(" world", reason)]
    return [*words, chunk(finish="stop"), DONE]


def ollama_call(call_id: str, path: str) -> bytes:
    """One of Ollama's parallel tool calls: whole, at index 0, with its own id."""
    call = {"id": call_id, "index": 0, "type": "function"}
    call["function"] = {
        "name": "file_write",
        "arguments": orjson.dumps({"filePath": path}).decode(),
    }
    return chunk("", role="assistant", tool_calls=[call])


# Gemini's errors: a list holding one object, OpenAI's `{"error": …}` within.
GEMINI_MESSAGE = "Function calling with a response mime type: 'application/json' is unsupported"
GEMINI_ERROR = orjson.dumps(
    [{"error": {"code": 400, "message": GEMINI_MESSAGE, "status": "INVALID_ARGUMENT"}}]
)
WHOLE = completion_body(
    completion_id="c1", created=1, model="m", contents=["Hi"], finish_reason="stop", usage={}
)
LEAKY = "Rate limit reached in organization org-AbC123xyz"  # relay's account: not passed on
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some servers open a body with
# Whole answers: their status and body.
ANSWERS = {
    "gemini-refusal": (400, GEMINI_ERROR),
    "gemini-error": (200, GEMINI_ERROR),
    "bom-answer": (200, BOM + WHOLE),
    "bom-error": (200, BOM + orjson.dumps({"error": {"message": LEAKY, "type": "requests"}})),
    "bom-refusal": (400, BOM + orjson.dumps({"error": {"message": "Bad tools", "type": "x"}})),
}

SCRIPTS: dict[str, list[Any]] = {
    "empty-finish": every_chunk_finished(""),
    "stop-finish": every_chunk_finished("stop"),
    # Its chunks read in one piece: the first finish and the words after it come together.
    "stop-finish-at-once": [
        chunk("Hel", "stop") + chunk("lo", "stop"),
        PAUSE,
        chunk(" world", "stop"),
        DONE,
    ],
    "ollama-tools": [
        ollama_call("call_a1", "hello.py"),
        ollama_call("call_b2", "world.py"),
        chunk("", "tool_calls"),
        DONE,
    ],
    "stop-finish-silent": [chunk("Hel", "stop"), chunk("lo", "stop"), HANG],
    "gemini-error-event": [chunk("Hel"), b"data: " + GEMINI_ERROR + b"\n\n", DONE],
    "bom-stream": [BOM + chunk("Hel"), chunk("lo", "stop"), DONE],
    "bom-alone-first": [BOM, PAUSE, chunk("Hel"), chunk("lo", "stop"), DONE],
}


def sent(model: str) -> bytes:
    return played(SCRIPTS[model])


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream, monkeypatch):
    """relay in front of a provider playing SCRIPTS: (http, client id, token)."""
    monkeypatch.setattr(reply, "FINISHED_SILENCE_SECONDS", SILENCE)
    ended = asyncio.Event()  # the test is over: a hanging provider may end

    async def chat(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        if model in ANSWERS:
            status, body = ANSWERS[model]
            return web.Response(status=status, body=body, content_type="application/json")
        return await play(request, SCRIPTS[model], ended)

    models = {model: model for model in [*SCRIPTS, *ANSWERS]}
    upstream = await provider_upstream(chat, "quirks", models=models, timeout_s=TIMEOUT)
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    client, token = await client_with_token(http)
    yield http, client["id"], token
    ended.set()


async def ask(http, token: str, model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return await http.post("/v1/chat/completions", json=body, headers=bearer(token))


async def answer_rows(database_url: str, client_id: str) -> list[tuple[Any, ...]]:
    rows = await stored_messages(database_url, client_id)
    return [(row["content"], row["status"]) for row in rows if row["role"] == "assistant"]


@pytest.mark.parametrize("model", ["empty-finish", "stop-finish", "stop-finish-at-once"])
async def test_a_finish_reason_on_every_chunk_does_not_end_a_paused_answer(
    relay, database_url, model
):
    http, client_id, token = relay
    response = await ask(http, token, model, stream=True)
    assert await response.read() == sent(model)
    assert await answer_rows(database_url, client_id) == [("Hello world", "complete")]


async def test_a_provider_going_on_after_its_finish_ends_only_past_its_timeout(relay, database_url):
    """Its finish_reasons said nothing of the end: a silence ends the answer only once it
    lasts the upstream's timeout, and then as the last chunk said, finished."""
    http, client_id, token = relay
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await ask(http, token, "stop-finish-silent", stream=True)
    assert await response.read() == sent("stop-finish-silent")
    assert loop.time() - started >= TIMEOUT
    assert await answer_rows(database_url, client_id) == [("Hello", "complete")]


def test_an_empty_finish_reason_finishes_nothing():
    observer = StreamObserver()
    observer.feed(chunk("Hel", ""))
    assert not observer.all_finished and observer.finish_reason is None
    observer.feed(chunk(finish="stop"))
    assert observer.all_finished and observer.finish_reason == "stop"


async def test_parallel_tool_calls_all_at_index_0_are_kept_apart(relay, database_url):
    http, client_id, token = relay
    response = await ask(http, token, "ollama-tools", stream=True)
    assert await response.read() == sent("ollama-tools")
    rows = await stored_messages(database_url, client_id)
    assert [row["tool_calls"] for row in rows if row["role"] == "assistant"] == [
        [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "file_write", "arguments": f'{{"filePath":"{path}"}}'},
            }
            for call_id, path in (("call_a1", "hello.py"), ("call_b2", "world.py"))
        ]
    ]


def test_tool_call_fragments_continue_their_call_unless_they_name_another():
    """OpenAI's fragments name their call's id once (or again, the same); a fragment with
    no id, or the same one, continues the call at its index."""
    observer = StreamObserver()
    fragments = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"city":'}},
        {"index": 0, "id": "call_1", "function": {"arguments": '"Paris"}'}},
        {
            "index": 1,
            "id": "call_2",
            "type": "function",
            "function": {"name": "put", "arguments": "{}"},
        },
    ]
    for fragment in fragments:
        observer.feed(chunk(tool_calls=[fragment]))
    assert observer.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "put", "arguments": "{}"}},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_refusal_in_a_json_list_reaches_the_client_in_its_words(relay, stream):
    http, _, token = relay
    response = await ask(http, token, "gemini-refusal", stream=stream)
    error = await assert_error(response, 400)
    assert error["message"] == GEMINI_MESSAGE


async def test_an_answer_that_is_an_error_in_a_json_list_goes_out_in_openais_shape(
    relay, database_url
):
    http, client_id, token = relay
    response = await ask(http, token, "gemini-error")
    assert await response.json() == orjson.loads(GEMINI_ERROR)[0]
    assert await answer_rows(database_url, client_id) == [("", "failed")]


async def test_an_error_event_in_a_json_list_goes_out_in_openais_shape(relay, database_url):
    """OpenAI's SDKs raise on `{"error": …}` only: a list they would hand on as a chunk."""
    http, client_id, token = relay
    response = await ask(http, token, "gemini-error-event", stream=True)
    expected = sent("gemini-error-event").replace(
        GEMINI_ERROR, orjson.dumps(orjson.loads(GEMINI_ERROR)[0])
    )
    assert await response.read() == expected
    assert await answer_rows(database_url, client_id) == [("Hel", "failed")]


async def test_an_answer_opening_with_a_bom_is_passed_on_as_sent(relay, database_url):
    http, client_id, token = relay
    response = await ask(http, token, "bom-answer")
    assert response.status == 200
    assert await response.read() == ANSWERS["bom-answer"][1]
    assert await answer_rows(database_url, client_id) == [("Hi", "complete")]


@pytest.mark.parametrize("model", ["bom-stream", "bom-alone-first"])
async def test_a_stream_opening_with_a_bom_reaches_the_client_without_it(
    relay, database_url, model
):
    """SSE clients per WHATWG skip it; OpenAI's Python SDK took it for part of the first
    field's name and lost the first event ("lo" for "Hello")."""
    http, client_id, token = relay
    response = await ask(http, token, model, stream=True)
    assert response.status == 200
    assert await response.read() == sent(model).removeprefix(BOM)
    assert await answer_rows(database_url, client_id) == [("Hello", "complete")]


async def test_an_error_opening_with_a_bom_is_reworded_as_any_other(relay, database_url):
    """Its words had to change: it goes out re-encoded, without the BOM."""
    http, client_id, token = relay
    response = await ask(http, token, "bom-error")
    assert response.status == 200
    words = "Rate limit reached in organization org-[redacted]"
    assert await response.read() == orjson.dumps({"error": {"message": words, "type": "requests"}})
    assert await answer_rows(database_url, client_id) == [("", "failed")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_refusal_opening_with_a_bom_reaches_the_client_in_its_words(relay, stream):
    http, _, token = relay
    response = await ask(http, token, "bom-refusal", stream=stream)
    error = await assert_error(response, 400)
    assert error["message"] == "Bad tools"


async def test_a_provider_going_on_after_its_finish_is_cut_at_the_longest_answer(
    make_client, make_settings, provider_upstream, database_url
):
    """A finish_reason with every chunk says nothing of the end: an answer still coming
    when RELAY_MAX_ANSWER_SECONDS passes is cut, as any other is."""
    script = [chunk("a", "stop"), chunk("b", "stop")]
    script += [piece for n in range(20) for piece in (0.2, chunk(f"w{n} ", "stop"))]
    ended = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await play(request, [*script, DONE], ended)

    upstream = await provider_upstream(chat, "long", models={"m": "m"}, timeout_s=TIMEOUT)
    settings = make_settings(upstreams=(upstream,), rate_limits=False, max_answer_seconds=1.5)
    http = await make_client(settings)
    client, token = await client_with_token(http)
    try:
        response = await ask(http, token, "m", stream=True)
        raw = await response.read()
    finally:
        ended.set()
    assert b"answer_too_long" in raw and DONE not in raw
    [(_, status)] = await answer_rows(database_url, client["id"])
    assert status == "cut"
