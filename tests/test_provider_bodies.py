"""Provider answers that are not what their status says: a 200 with no event stream, a
200 whose body is no JSON, a last event short of its blank line, an encoding relay
cannot read, one event too large. The client gets a whole error where it can still
have one, and history and the receipt say what it got."""

import asyncio
import hashlib

import orjson
import pytest
from aiohttp import web
from openai._streaming import SSEDecoder

from relay.upstreams import reply, sse
from tests.api_calls import assert_error, bearer
from tests.history_calls import CONVERSATION, query
from tests.receipt_calls import fetch_receipt
from tests.test_provider_misbehaviour import CHUNK, DONE, FINISH, WHOLE, ask, start_relay

USAGE_LINE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
)
ERROR_LINE = b'data: {"error":{"message":"overloaded","type":"server_error","param":null}}'
ERROR_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"


async def _stream(request: web.Request, *parts: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def provider_chat(request: web.Request) -> web.StreamResponse:
    """The model asked for names how the provider answers (stream or not alike)."""
    model = (await request.json())["model"]
    if model == "empty-sse":  # 200 text/event-stream, Content-Length: 0
        return web.Response(body=b"", content_type="text/event-stream")
    if model == "empty-chunked":  # 200 text/event-stream, chunked, no chunk at all
        return await _stream(request)
    if model == "html":  # a proxy's error page, or a base_url missing its /v1
        return web.Response(body=ERROR_PAGE, content_type="text/html")
    if model == "plain-sse":  # an event stream labelled text/plain: read as one
        response = await _stream(request, CHUNK, FINISH, b"data: [DONE]\n\n")
        return response
    if model == "empty-json":
        return web.Response(body=b"", content_type="application/json")
    if model == "sse-for-whole":  # event stream bytes for a request that asked none
        return web.Response(body=CHUNK + FINISH, content_type="application/json")
    if model == "usage-unended":  # finished, then its usage line short of its blank line
        return await _stream(request, CHUNK, FINISH, USAGE_LINE)
    if model == "finish-unended":  # the finishing chunk itself short of its blank line
        return await _stream(request, CHUNK, FINISH.rstrip(b"\n") + b"\n")
    if model == "half-event":  # a body that ends cleanly in the middle of an event's JSON
        return await _stream(request, CHUNK, b'data: {"half":"wa')
    if model == "content-unended":  # text, no finish_reason, short of its blank line
        return await _stream(request, CHUNK, CHUNK.rstrip(b"\n"))
    if model == "error-unended":  # its error event, short of its blank line
        key = request.headers["Authorization"].removeprefix("Bearer ")
        error = {"error": {"message": f"key {key} is over its quota", "type": "x"}}
        return await _stream(request, CHUNK, b"data: " + orjson.dumps(error))
    if model == "last-words-unended":  # its last words and finish, short of their end
        last = CHUNK.replace(b'"Hi"', b'" there"').replace(b"null}]}", b'"stop"}]}').rstrip()
        return await _stream(request, CHUNK, last)
    if model == "plain-error-unended":  # its error event (nothing to reword), short of its end
        return await _stream(request, CHUNK, ERROR_LINE)
    if model == "usage-unended-late":  # as usage-unended, its end a while after the first chunk
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(CHUNK)
        await asyncio.sleep(0.5)
        await response.write(FINISH + USAGE_LINE)
        await response.write_eof()
        return response
    if model in WHOLE_LABELS:  # a whole answer, labelled as the model's name says
        return web.Response(body=WHOLE_BODY, headers={"Content-Type": WHOLE_LABELS[model]})
    if model == "brotli":  # an encoding relay did not ask for
        return web.Response(
            body=b"\x1b\x00garbage",
            headers={"Content-Type": "text/event-stream", "Content-Encoding": "br"},
        )
    if model == "done-past-cap":  # its [DONE], and a comment after it, in its last write
        return await _stream(request, CHUNK * 4, CHUNK + FINISH + DONE + b": the end\n\n")
    if model == "huge-event":
        big = b'data: {"x":"' + b"y" * (sse.MAX_EVENT_BYTES + 16) + b'"}\n\n'
        return await _stream(request, CHUNK, big, FINISH)
    raise web.HTTPNotFound()


WHOLE_BODY = orjson.dumps(WHOLE) + b"\n"
WHOLE_LABELS = {
    "json-text-plain": "text/plain; charset=utf-8",
    "json-octet-stream": "application/octet-stream",
    "json-charset": "application/json; charset=utf-8",
    "json-problem": "application/vnd.example+json",
}
MODELS = (
    *WHOLE_LABELS,
    "last-words-unended",
    "plain-error-unended",
    "usage-unended-late",
    "empty-sse",
    "empty-chunked",
    "html",
    "plain-sse",
    "empty-json",
    "sse-for-whole",
    "usage-unended",
    "finish-unended",
    "half-event",
    "content-unended",
    "error-unended",
    "brotli",
    "huge-event",
    "done-past-cap",
)


@pytest.fixture
async def relay(make_settings, make_client, provider_upstream):
    models = {model: model for model in MODELS}
    return await start_relay(
        make_settings, make_client, provider_upstream, provider_chat, models=models, timeout_s=10
    )


async def answers(database_url, client_id):
    return await query(
        database_url,
        "SELECT status, prompt_tokens, completion_tokens, content FROM messages"
        " WHERE client_id = %s AND role = 'assistant' ORDER BY seq",
        (client_id,),
    )


async def assert_receipt_of(http, token, response, body, status):
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["status"] == status
    assert receipt["response_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("model", ["empty-sse", "empty-chunked"])
async def test_a_stream_answered_with_an_empty_body_is_a_whole_502(relay, database_url, model):
    http, token, client_id = relay
    response = await ask(http, token, model)
    body = await response.read()
    await assert_error(response, 502, "upstream_cut")
    await assert_receipt_of(http, token, response, body, "cut")
    assert [row["status"] for row in await answers(database_url, client_id)] == ["cut"]


async def test_a_stream_answered_with_an_html_page_is_a_whole_502(relay, database_url):
    http, token, client_id = relay
    response = await ask(http, token, "html")
    error = await assert_error(response, 502, "upstream_not_streamed")
    assert "text/html" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert b"nginx" not in await response.read()
    assert [row["status"] for row in await answers(database_url, client_id)] == ["failed"]


async def test_an_event_stream_labelled_text_plain_is_relayed(relay):
    http, token, _ = relay
    response = await ask(http, token, "plain-sse")
    assert response.status == 200
    assert await response.read() == CHUNK + FINISH + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "model,content_type",
    [
        # Read as the JSON it is: OpenAI's Node SDK parses only a JSON media type.
        ("json-text-plain", "application/json"),
        ("json-octet-stream", "application/json"),
        ("json-charset", "application/json; charset=utf-8"),
        ("json-problem", "application/vnd.example+json"),
    ],
)
async def test_a_whole_answer_goes_out_labelled_as_json(relay, model, content_type):
    http, token, _ = relay
    response = await ask(http, token, model, stream=False)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == WHOLE_BODY  # the bytes as sent


@pytest.mark.parametrize("model", ["html", "empty-json", "sse-for-whole"])
async def test_a_whole_answer_that_is_no_json_object_is_a_502(relay, database_url, model):
    http, token, client_id = relay
    response = await ask(http, token, model, stream=False)
    body = await response.read()
    await assert_error(response, 502, "upstream_malformed")
    assert response.headers["x-should-retry"] == "false"
    await assert_receipt_of(http, token, response, body, "failed")
    assert [row["status"] for row in await answers(database_url, client_id)] == ["failed"]


@pytest.mark.parametrize(
    "model,sent",
    [
        # Ended, as every SSE client (OpenAI's SDKs too) must see an event to read it.
        ("usage-unended", CHUNK + FINISH + USAGE_LINE + b"\n\n"),
        ("finish-unended", CHUNK + FINISH.rstrip(b"\n") + b"\n\n\n"),
    ],
)
async def test_a_finished_answer_whose_last_event_lacks_its_blank_line_is_complete(
    relay, database_url, model, sent
):
    """The body ended cleanly: its end ends the last event, which the client gets ended
    and history reads (its usage, here), with no error event of relay's."""
    http, token, client_id = relay
    response = await ask(http, token, model)
    body = await response.read()
    assert response.status == 200 and body == sent
    await assert_receipt_of(http, token, response, body, "complete")
    [row] = await answers(database_url, client_id)
    assert row["status"] == "complete" and row["content"] == "Hi"
    if model == "usage-unended":
        assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 2)


async def test_an_unfinished_answer_whose_last_event_lacks_its_blank_line_is_cut(
    relay, database_url
):
    """The last event is whole, but the answer never said it finished: it goes to the
    client ended by a blank line, then relay's error event, never glued to it."""
    http, token, client_id = relay
    response = await ask(http, token, "content-unended")
    body = await response.read()
    assert body.startswith(CHUNK + CHUNK)
    events = body.split(b"\n\n")
    assert orjson.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "upstream_cut"
    await assert_receipt_of(http, token, response, body, "cut")
    [row] = await answers(database_url, client_id)
    assert row["status"] == "cut" and row["content"] == "HiHi"


async def test_an_event_the_body_ends_in_the_middle_of_is_cut(relay, database_url):
    http, token, client_id = relay
    body = await (await ask(http, token, "half-event")).read()
    assert body.startswith(CHUNK) and b"half" not in body
    assert orjson.loads(body[len(CHUNK) :].removeprefix(b"data: "))["error"]["code"] == (
        "upstream_cut"
    )
    assert [row["status"] for row in await answers(database_url, client_id)] == ["cut"]


async def test_an_error_event_lacking_its_blank_line_is_passed_on_reworded(relay, database_url):
    http, token, client_id = relay
    body = await (await ask(http, token, "error-unended")).read()
    assert body.startswith(CHUNK)
    last = orjson.loads(body[len(CHUNK) :].removeprefix(b"data: "))
    assert last["error"]["message"] == "key [redacted] is over its quota"
    assert b"upstream_cut" not in body
    assert [row["status"] for row in await answers(database_url, client_id)] == ["failed"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_answer_in_an_encoding_relay_cannot_read_says_so(relay, stream):
    http, token, _ = relay
    response = await ask(http, token, "brotli", stream)
    error = await assert_error(response, 502, "upstream_undecodable")
    assert "could not be decoded" in error["message"]
    # OpenAI's SDKs retry a 502: the provider would answer so again, and may bill each.
    assert response.headers["x-should-retry"] == "false"


async def test_an_event_too_large_is_cut_by_relay_and_says_so(relay, database_url):
    http, token, client_id = relay
    body = await (await ask(http, token, "huge-event")).read()
    assert body.startswith(CHUNK) and len(body) < sse.MAX_EVENT_BYTES  # not passed on
    error = orjson.loads(body[len(CHUNK) :].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_too_large"
    assert "broke off" not in error["message"]
    assert [row["status"] for row in await answers(database_url, client_id)] == ["cut"]


async def ask_relays_own_chat(http, token, model, stream):
    body = {"message": "Hi", "model": model, "stream": stream}
    return await http.post("/v1/chat", json=body, headers=bearer(token))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_relays_own_chat_reads_a_last_event_the_body_ended_too(relay, database_url, stream):
    """As on /v1/chat/completions: the body's clean end ends its last event (its usage)."""
    http, token, client_id = relay
    response = await ask_relays_own_chat(http, token, "usage-unended", stream)
    assert response.status == 200
    body = await response.read()
    if stream:
        assert b"event: message.done" in body
    usage = orjson.loads(body.rsplit(b"data: ", 1)[1] if stream else body)["usage"]
    assert usage["total_tokens"] == 7
    [row] = await answers(database_url, client_id)
    assert row["status"] == "complete" and (row["prompt_tokens"], row["completion_tokens"]) == (
        5,
        2,
    )


async def test_relays_own_chat_says_relay_cut_an_event_too_large(relay, database_url):
    http, token, client_id = relay
    body = await (await ask_relays_own_chat(http, token, "huge-event", True)).read()
    error = orjson.loads(body.rsplit(b"event: error\ndata: ", 1)[1])["error"]
    assert error["code"] == "upstream_too_large" and "broke off" not in error["message"]
    assert [row["status"] for row in await answers(database_url, client_id)] == ["cut"]


async def test_an_error_event_the_body_ended_is_ended_so_every_client_reads_it(relay):
    """An event short of its blank line is dropped by SSE clients (OpenAI's SDKs too):
    passed on so, the provider's error would leave the application a cut-short answer
    it takes for whole."""
    http, token, _ = relay
    body = await (await ask(http, token, "plain-error-unended")).read()
    assert body == CHUNK + ERROR_LINE + b"\n\n"
    events = [event.data for event in SSEDecoder().iter_bytes(iter([body]))]
    assert orjson.loads(events[-1])["error"]["message"] == "overloaded"


async def test_an_error_after_a_last_event_the_body_ended_is_an_event_of_its_own(relay):
    """The answer completed, its usage line short of its blank line, and then could not be
    saved (its conversation was deleted): relay's error event must not be glued to that
    line, where no client would read it as the error it is."""
    http, token, _ = relay
    response = await ask(http, token, "usage-unended-late")
    first = await response.content.readany()
    conversation = response.headers[CONVERSATION]
    erased = await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
    assert erased.status == 404  # nothing stored yet: it leaves a tombstone
    body = first + await response.read()
    events = [event.data for event in SSEDecoder().iter_bytes(iter([body]))]
    assert orjson.loads(events[-1])["error"]["code"] == "conversation_deleted"
    assert orjson.loads(events[-2])["usage"]["total_tokens"] == 7
    await assert_receipt_of(http, token, response, body, "failed")


async def test_relays_own_chat_streams_the_words_of_a_last_event_the_body_ended(relay):
    http, token, _ = relay
    raw = await (await ask_relays_own_chat(http, token, "last-words-unended", True)).read()
    deltas, done = [], None
    for block in raw.decode().split("\n\n"):
        if block.startswith("event: message.delta"):
            deltas.append(orjson.loads(block.split("data: ", 1)[1])["content"])
        elif block.startswith("event: message.done"):
            done = orjson.loads(block.split("data: ", 1)[1])
    assert done is not None and done["message"]["content"] == "Hi there"
    # What the deltas said adds up to the answer (their padding aside).
    assert "".join(deltas) == "Hi there"


async def test_the_sdk_reads_the_last_words_of_an_answer_the_body_ended(relay, database_url):
    """What history keeps as the answer (and the receipt signs as complete) is what the
    client's SDK reads: the last event's words and finish included."""
    http, token, client_id = relay
    response = await ask(http, token, "last-words-unended")
    body = await response.read()
    chunks = [orjson.loads(event.data) for event in SSEDecoder().iter_bytes(iter([body]))]
    words = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert words == "Hi there" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    [row] = await answers(database_url, client_id)
    assert (row["status"], row["content"]) == ("complete", "Hi there")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat"])
async def test_an_answer_within_the_cap_is_complete_though_its_done_passes_it(
    relay, database_url, monkeypatch, path
):
    """The cap on a streamed answer (64 MiB; here the answer's own size) bounds the answer,
    not its `[DONE]` nor what the provider sent after it in the same read."""
    monkeypatch.setattr(reply, "MAX_RESPONSE_BYTES", len(CHUNK * 5 + FINISH))
    http, token, client_id = relay
    if path == "/v1/chat":
        response = await ask_relays_own_chat(http, token, "done-past-cap", True)
    else:
        response = await ask(http, token, "done-past-cap")
    body = await response.read()
    assert b"upstream_too_large" not in body
    [row] = await answers(database_url, client_id)
    assert (row["status"], row["content"]) == ("complete", "Hi" * 5)
