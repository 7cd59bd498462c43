"""A provider escaping UTF-16 surrogates alone (`"\\ud83d"`), as a server cutting strings by
UTF-16 length does to an emoji: JSON's grammar allows it, the client's parser reads it,
and so does relay, keeping in history what that parser shows. An event no parser reads
fails the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.upstreams.deltas import DeltaObserver
from relay.upstreams.observer import StreamObserver, summarize_completion
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import stored_messages
from tests.scripted_provider import play, sent
from tests.test_chat_native import sse_events

DONE = b"data: [DONE]\n\n"
SMILE = "\U0001f600"


def escaped(text: str) -> bytes:
    """`text` as a JSON string as Python's json (and a Node server) writes it: every
    character past ASCII as \\u escapes, a lone surrogate among them."""
    return json.dumps(text).encode()


def event(fields: str = "", **delta: str) -> bytes:
    """A chunk whose delta holds `delta`'s strings escaped (`escaped`), then `fields`."""
    parts = b",".join(f'"{name}":'.encode() + escaped(value) for name, value in delta.items())
    return (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":'
        b'[{"index":0,"delta":{' + parts + b"}" + fields.encode() + b"}]}\n\n"
    )


FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
SCRIPTS: dict[str, list[Any]] = {
    "split": [event(content="smile \ud83d"), event(content="\ude00 end"), FINISH, DONE],
    "lone": [
        event(content="lone \ud83d"),
        event(content=" here"),
        event(content=" done"),
        FINISH,
        DONE,
    ],
    "unreadable": [event(content="Hel"), b"data: {'content': 'lo'}\n\n", FINISH, DONE],
}
WHOLE = (
    b'{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":' + escaped("lone \ud83d here") + b"},"
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}'
)


@pytest.fixture
async def relay(make_client, make_settings, provider_upstream):
    """relay in front of a provider playing SCRIPTS (WHOLE when not streamed)."""
    ended = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=WHOLE, content_type="application/json")
        return await play(request, SCRIPTS[body["model"]], ended)

    models = {model: model for model in SCRIPTS}
    upstream = await provider_upstream(chat, "surrogates", models=models)
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    client, token = await client_with_token(http)
    yield http, client["id"], token
    ended.set()


async def answer_rows(database_url: str, client_id: str) -> list[tuple[Any, ...]]:
    rows = await stored_messages(database_url, client_id)
    return [(row["content"], row["status"]) for row in rows if row["role"] == "assistant"]


def client_text(raw: bytes) -> str:
    """The words a client's parser (Python's json, as OpenAI's SDK) reads in a stream."""
    words = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for choice in json.loads(block[6:])["choices"]:
                words.append(choice["delta"].get("content") or "")
    return "".join(words)


@pytest.mark.parametrize(
    ("model", "stored"),
    [("split", f"smile {SMILE} end"), ("lone", "lone \ufffd here done")],
)
async def test_a_stream_escaping_surrogates_is_kept_as_the_client_reads_it(
    relay, database_url, model, stored
):
    http, client_id, token = relay
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    raw = await response.read()
    assert raw == sent(SCRIPTS[model])
    shown = client_text(raw).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert shown == stored
    assert await answer_rows(database_url, client_id) == [(stored, "complete")]


async def test_a_whole_answer_escaping_a_lone_surrogate_is_passed_on_as_sent(relay, database_url):
    http, client_id, token = relay
    body = {"model": "lone", "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert response.status == 200
    assert await response.read() == WHOLE
    assert await answer_rows(database_url, client_id) == [("lone \ufffd here", "complete")]


async def test_an_event_no_parser_reads_fails_the_answer(relay, database_url):
    """The client's SDK raises on it, and its words are lost to history: not complete."""
    http, client_id, token = relay
    body = {"model": "unreadable", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    assert await response.read() == sent(SCRIPTS["unreadable"])
    assert await answer_rows(database_url, client_id) == [("Hel", "failed")]


@pytest.mark.parametrize(
    ("model", "deltas", "stored"),
    [
        ("split", ["smile ", f"{SMILE} end"], f"smile {SMILE} end"),
        ("lone", ["lone ", "\ufffd here", " done"], "lone \ufffd here done"),
    ],
)
async def test_relays_own_events_carry_the_words_whole(relay, database_url, model, deltas, stored):
    http, client_id, token = relay
    body = {"message": "Hi", "model": model, "stream": True}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    events = sse_events(await response.read())
    assert [data["content"] for name, data in events if name == "message.delta"] == deltas
    assert events[-1][0] == "message.done" and events[-1][1]["message"]["content"] == stored
    assert await answer_rows(database_url, client_id) == [(stored, "complete")]


async def test_relays_own_whole_answer_carries_the_words_whole(relay, database_url):
    http, client_id, token = relay
    response = await http.post(
        "/v1/chat", json={"message": "Hi", "model": "split"}, headers=bearer(token)
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["message"]["content"] == f"smile {SMILE} end"
    assert await answer_rows(database_url, client_id) == [(f"smile {SMILE} end", "complete")]


async def test_on_relays_own_chat_an_unreadable_event_ends_with_an_error(relay, database_url):
    http, client_id, token = relay
    body = {"message": "Hi", "model": "unreadable", "stream": True}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    name, data = sse_events(await response.read())[-1]
    assert name == "error" and "not JSON" in data["error"]["message"]
    assert await answer_rows(database_url, client_id) == [("Hel", "failed")]


async def test_a_request_escaping_a_lone_surrogate_is_refused_for_that(relay):
    http, _, token = relay
    body = b'{"model": "split", "messages": [{"role": "user", "content": "a \\ud83d"}]}'
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = await http.post("/v1/chat/completions", data=body, headers=headers)
    error = await assert_error(response, 400)
    assert "surrogate" in error["message"]


def observed(*chunks: bytes, observer: StreamObserver | None = None) -> StreamObserver:
    observer = observer or StreamObserver()
    for piece in chunks:
        observer.feed(piece)
    observer.close(body_ended=True)
    return observer


def test_every_string_the_answer_keeps_is_made_whole() -> None:
    call = '{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":'
    observer = observed(
        event(refusal="no \ud83d"),
        event(refusal="\ude00"),
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":['
        + call.encode()
        + escaped('{"a": "\ud83d')
        + b"}}]}}]}\n\n",
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
        + escaped('\ude00"}')
        + b"}}]}}]}\n\n",
        b'data: {"choices":[],"usage":{"note":' + escaped("\udfff") + b"}}\n\n",
    )
    summary = observer.summary()
    assert summary.refusal == f"no {SMILE}"
    assert summary.tool_calls[0]["function"]["arguments"] == f'{{"a": "{SMILE}"}}'
    assert summary.usage == {"note": "\ufffd"}
    assert summary.error is None and observer.malformed_events == 0
    orjson.dumps(summary.tool_calls)  # UTF-8 holds every string


def test_an_error_event_escaping_a_surrogate_is_read_as_the_error() -> None:
    observer = observed(b'data: {"error": {"message": ' + escaped("bad \ud83d") + b"}}\n\n")
    assert observer.error == {"message": "bad \ufffd"}


def test_a_last_event_the_body_ended_is_read_with_its_surrogates() -> None:
    observer = observed(event(content="a \ud83d", fields=',"finish_reason":"stop"')[:-2])
    assert (observer.text, observer.finish_reason) == ("a \ufffd", "stop")


def test_a_pair_split_across_deltas_goes_out_whole_and_a_lone_half_last_too() -> None:
    observer = DeltaObserver()
    observer.feed(event(content="a \ud83d"))
    assert observer.take() == ["a "]
    observer.feed(event(content="\ud83d"))
    assert observer.take() == ["\ufffd"]
    observer.close(body_ended=True)
    assert observer.take() == ["\ufffd"]
    assert observer.text == "a \ufffd\ufffd"


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": [], "usage": {"n": NaM}, "x": "\\ud83d"}',
        b'{"x": "\\ud83d"',
        '{"x": "\ud83d"}'.encode("utf-8", "surrogatepass"),
        b"[" * 1100 + b'"\\ud83d"' + b"]" * 1100,
    ],
    ids=["no constant", "cut", "encoded surrogate", "deep"],
)
def test_what_no_client_parser_reads_stays_refused(body: bytes) -> None:
    summary = summarize_completion(body)
    assert summary.error is not None and summary.error["code"] == "malformed_response"
    observer = observed(b"data: " + body + b"\n\n")
    assert observer.malformed_events == 1 and observer.error is not None


def test_a_whole_answer_escaping_surrogates_is_summarised_whole() -> None:
    summary = summarize_completion(WHOLE)
    assert (summary.text, summary.error) == ("lone \ufffd here", None)


def test_an_error_event_escaping_a_surrogate_still_has_relays_key_taken_out() -> None:
    from relay.upstreams.config import Upstream
    from relay.upstreams.rewording import reworded_events
    from relay.upstreams.routing import Route

    key = "sk-relays-own-provider-key-0123456789"
    upstream = Upstream("p", "http://127.0.0.1:1/v1", {"m": "m"}, api_key=key)
    message = f"Bad key {key} \ud83d"
    events = b'data: {"error": {"message": ' + escaped(message) + b"}}\n\n"
    reworded = reworded_events(events, Route("m", upstream, "m"))
    assert key.encode() not in reworded
    [payload] = [line[6:] for line in reworded.splitlines() if line.startswith(b"data: ")]
    assert orjson.loads(payload)["error"]["message"] == "Bad key [redacted] \ufffd"


def test_a_last_event_escaping_a_surrogate_is_whole_json_at_the_bodys_end() -> None:
    from relay.upstreams.pipe import _whole_data

    assert _whole_data(event(content="lone \ud83d").removesuffix(b"\n\n"))
    assert not _whole_data(b'data: {"content": "cut sho')


def test_nan_and_infinity_as_pythons_json_writes_them_are_read_as_null() -> None:
    """OpenAI's Python SDK reads them (a token's logprob of -Infinity, from a server on
    Python's json.dumps): the answer is as whole as its client sees it."""
    logprob = b'"logprobs":{"content":[{"token":"lo","logprob":-Infinity}]}'
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"lo"},' + logprob + b"}]}\n\n"
    observer = observed(event(content="Hel") + chunk + FINISH + DONE)
    summary = observer.summary()
    assert (summary.text, summary.error, observer.malformed_events) == ("Hello", None, 0)
    whole = WHOLE.replace(b'"usage":{', b'"usage":{"cost":NaN,')
    assert summarize_completion(whole).error is None
