"""A provider's error that quotes relay's own key, account or provider model id reaches the
client reworded, on every path; ordinary answers still pass byte for byte, and the
receipt hashes what the client got."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.upstreams.config import Upstream
from relay.upstreams.observer import StreamObserver
from relay.upstreams.pipe import pipe_stream
from relay.upstreams.rewording import provider_words
from relay.upstreams.routing import Route
from tests.api_calls import bearer, client_with_token
from tests.conftest import SIMULATOR_KEY
from tests.history_calls import query
from tests.receipt_calls import fetch_receipt

ACCOUNT = "org-AbC123xyz"
PROJECT = "proj_Q9wErTy8uI"
CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
# What providers really send: no space after `data:`, spaces in the JSON, comments.
ORDINARY = [
    b": ping\n\n",
    b'data:{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",'
    b' "choices": [{"index": 0, "delta": {"content": "an error? no"}, "finish_reason": null}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\n\r\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
    DONE,
]
# An error that quotes nothing of relay's: passed on exactly as sent.
HARMLESS_ERROR = b'data: {"error": {"message": "overloaded", "code": null}}\n\n'


def leaky_error(key: str) -> dict[str, Any]:
    """vLLM's error shape, quoting relay's key, account, project and the provider's model id."""
    message = f"Model leaky-model of {ACCOUNT}, project {PROJECT}, is overloaded (key {key})"
    return {
        "object": "error",
        "message": message,
        "type": "server_error",
        "param": None,
        "code": 503,
    }


REWORDED = (
    "Model public-leaky of org-[redacted], project proj_[redacted], is overloaded (key [redacted])"
)


async def provider_chat(request: web.Request) -> web.StreamResponse:
    """The last word of the user's message names what the provider does."""
    key = request.headers["Authorization"].removeprefix("Bearer ")
    body = await request.json()
    behaviour = body["messages"][-1]["content"]
    if behaviour == "whole-error":  # a 200 answer that is an error object
        return web.json_response({"error": leaky_error(key)})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if behaviour == "error-event":  # a chunk, its error event, then [DONE] (vLLM ends so)
        parts = [CHUNK, b"data: " + orjson.dumps({"error": leaky_error(key)}) + b"\n\n", DONE]
    elif behaviour == "crlf-string-error":  # in one write with a chunk: `event:` and CRLF
        error = b'{"error":"bad key ' + key.encode() + b'"}'
        parts = [CHUNK + b"event: error\r\ndata: " + error + b"\r\n\r\n"]
    elif behaviour == "harmless-error":
        parts = [CHUNK, HARMLESS_ERROR]
    else:
        parts = ORDINARY
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def leaky_relay(handler, make_settings, make_client, provider_upstream):
    """relay with a client's token, its one model `public-leaky` served by `handler` as
    `leaky-model`; (http, token, client id)."""
    upstream = await provider_upstream(handler, "leaky", models={"public-leaky": "leaky-model"})
    http = await make_client(make_settings(upstreams=(upstream,)))
    client, token = await client_with_token(http)
    return http, token, client["id"]


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    return await leaky_relay(provider_chat, make_settings, make_client, provider_upstream)


async def ask(
    relay, behaviour: str, *, stream: bool = True, path: str = "/v1/chat/completions"
) -> tuple[int, bytes, dict[str, Any]]:
    """The client's status and bytes, and the answer's receipt; `behaviour` is the user's
    message, on /v1/chat/completions or relay's own /v1/chat."""
    http, token, _ = relay
    body: dict[str, Any] = {"model": "public-leaky", "stream": stream}
    if path == "/v1/chat":
        body["message"] = behaviour
    else:
        body["messages"] = [{"role": "user", "content": behaviour}]
    response = await http.post(path, json=body, headers=bearer(token))
    received = await response.read()
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["response_sha256"] == hashlib.sha256(received).hexdigest()
    return response.status, received, receipt


async def answer_status(relay, database_url: str) -> list[str]:
    rows = await query(
        database_url,
        "SELECT status FROM messages WHERE client_id = %s AND role = 'assistant'",
        (relay[2],),
    )
    return [row["status"] for row in rows]


def assert_nothing_of_relays(received: bytes) -> None:
    assert SIMULATOR_KEY.encode() not in received
    for secret in (ACCOUNT, PROJECT, "leaky-model"):
        assert secret.encode() not in received, received


async def test_a_streamed_error_event_is_reworded_and_the_receipt_hashes_it(relay, database_url):
    status, received, receipt = await ask(relay, "error-event")
    assert status == 200
    assert_nothing_of_relays(received)
    assert received.startswith(CHUNK) and received.endswith(DONE)
    event = received.removeprefix(CHUNK).removesuffix(DONE)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    # Only the message changed: the provider's other fields are all there, as sent.
    assert orjson.loads(event.removeprefix(b"data: ")) == {
        "error": {**leaky_error(SIMULATOR_KEY), "message": REWORDED}
    }
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


async def test_an_error_event_among_other_events_is_reworded_alone(relay):
    _, received, _ = await ask(relay, "crlf-string-error")
    assert_nothing_of_relays(received)
    assert received == CHUNK + b'event: error\ndata: {"error":"bad key [redacted]"}\n\n'


async def test_an_error_event_quoting_nothing_of_relays_passes_as_sent(relay):
    _, received, _ = await ask(relay, "harmless-error")
    assert received == CHUNK + HARMLESS_ERROR


async def test_an_ordinary_stream_reaches_the_client_byte_for_byte(relay, database_url):
    status, received, receipt = await ask(relay, "ordinary")
    assert status == 200
    assert received == b"".join(ORDINARY)
    assert receipt["status"] == "complete"
    assert await answer_status(relay, database_url) == ["complete"]


async def test_a_whole_answer_that_is_an_error_is_reworded(relay, database_url):
    status, received, receipt = await ask(relay, "whole-error", stream=False)
    assert status == 200  # as the provider sent it
    assert_nothing_of_relays(received)
    assert orjson.loads(received) == {"error": {**leaky_error(SIMULATOR_KEY), "message": REWORDED}}
    assert receipt["status"] == "failed"
    assert await answer_status(relay, database_url) == ["failed"]


class Provider:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def chunk(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def close(self) -> None:
        pass


class Client:
    def __init__(self) -> None:
        self.written = bytearray()

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_an_error_after_done_in_the_same_chunk_is_reworded_too():
    """What follows [DONE] is held back with it, and hashed before it is sent."""
    upstream = Upstream("leaky", "http://provider.test/v1", {"m": "m"}, api_key=SIMULATOR_KEY)
    error = b'data: {"error":{"message":"key ' + SIMULATOR_KEY.encode() + b'"}}\n\n'
    client, observer = Client(), StreamObserver()
    result = await pipe_stream(
        client,
        Provider([CHUNK + DONE + error]),
        observer,
        lambda: None,
        Route("m", upstream, "m"),
    )
    assert bytes(client.written) == CHUNK
    assert result.final == DONE + b'data: {"error":{"message":"key [redacted]"}}\n\n'
    assert observer.sha256_with(result.final) == hashlib.sha256(CHUNK + result.final).hexdigest()


@pytest.mark.parametrize(
    ("key", "said", "read"),
    [
        # A placeholder key of a local server is redacted only where it stands whole.
        ("sim", "simulated refusal for key sim.", "simulated refusal for key [redacted]."),
        ("EMPTY", "EMPTY is not a key; got 'EMPTY'", "[redacted] is not a key; got '[redacted]'"),
        # A real key is redacted wherever it appears, inside a longer run too.
        ("sk-" + "a1" * 12, "key=sk-" + "a1" * 12 + "_x", "key=[redacted]_x"),
    ],
)
def test_the_provider_key_is_redacted_where_it_is_the_key(key, said, read):
    upstream = Upstream("local", "http://provider.test/v1", {"m": "m"}, api_key=key)
    assert provider_words(said, Route("m", upstream, "m")) == read
