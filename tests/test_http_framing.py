"""What relay does with a request's HTTP version, framing, method and head size, over
raw sockets: an answer without a length ends its connection for an HTTP/1.0 client,
and what HTTP/1.1 refuses (Transfer-Encoding in HTTP/1.0, another major version, an
unknown method, too many headers) gets its RFC status in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.api_calls import client_with_token
from tests.relay_process import Answer, read_answer

# Far short of aiohttp's keep-alive (75 s) and of its lingering (10 s).
CLOSED_WITHIN = 5.0
STREAMS = {
    "/v1/chat/completions": (
        {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        b"data: [DONE]\n\n",
    ),
    "/v1/chat": ({"message": "hi", "stream": True}, b"event: message.done\n"),
}


@pytest.fixture
async def relay(make_client, make_settings) -> TestClient:
    return await make_client(make_settings(rate_limits=False))


async def until_closed(relay: TestClient, raw: bytes) -> bytes:
    """Everything relay sends in reply to `raw`, read until it closes the connection."""
    reader, writer = await asyncio.open_connection(relay.host, relay.port)
    writer.write(raw)
    try:
        async with asyncio.timeout(CLOSED_WITHIN):
            return await reader.read()
    finally:
        writer.close()


def post(path: str, version: str, token: str, body: object, *extra: str) -> bytes:
    data = orjson.dumps(body)
    head = [
        f"POST {path} HTTP/{version}",
        "Host: relay",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def head_of(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return status_line, headers, body


def assert_refused(raw: bytes, status: int, code: str) -> dict[str, str]:
    """`raw` is one answer, `status` in OpenAI's error shape, and nothing after it."""
    status_line, headers, body = head_of(raw)
    # In HTTP/1.1, relay's version, as every answer: aiohttp's own said HTTP/1.0.
    assert status_line.startswith(f"HTTP/1.1 {status} "), raw
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert len(body) == int(headers["content-length"])  # one answer, then the connection ended
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    return headers


@pytest.mark.parametrize("path", list(STREAMS))
async def test_a_stream_to_an_http10_client_ends_with_its_connection(relay, path):
    _, token = await client_with_token(relay)
    body, last = STREAMS[path]
    first = post(path, "1.0", token, body, "Connection: keep-alive")
    pipelined = b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    raw = await until_closed(relay, first + pipelined)
    status_line, headers, stream = head_of(raw)
    assert status_line == "HTTP/1.0 200 OK"
    # HTTP/1.0 has no chunking: the end of the connection is the end of the answer.
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert headers.get("connection", "close").lower() == "close"
    assert last in stream and b"HTTP/1." not in stream  # the next request was not answered in it


async def test_an_http10_answer_with_a_length_keeps_its_connection(relay):
    reader, writer = await asyncio.open_connection(relay.host, relay.port)
    for _ in range(2):
        writer.write(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
    writer.close()


async def test_an_event_stream_says_close_when_asked_to_close(relay):
    _, token = await client_with_token(relay)
    raw = await until_closed(relay, post("/v1/chat", "1.1", token, *STREAMS["/v1/chat"][:1],
                                         "Connection: close"))  # fmt: skip
    status_line, headers, _ = head_of(raw)
    assert status_line == "HTTP/1.1 200 OK" and headers["connection"] == "close"


async def test_an_event_stream_on_a_kept_alive_connection_is_chunked_and_says_nothing(relay):
    _, token = await client_with_token(relay)
    reader, writer = await asyncio.open_connection(relay.host, relay.port)
    writer.write(post("/v1/chat", "1.1", token, STREAMS["/v1/chat"][0]))
    head = await reader.readuntil(b"\r\n\r\n")
    _, headers, _ = head_of(head)
    assert headers["transfer-encoding"] == "chunked" and "connection" not in headers
    async with asyncio.timeout(CLOSED_WITHIN):
        await reader.readuntil(b"\r\n0\r\n\r\n")  # the last chunk
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    writer.close()


@pytest.mark.parametrize("upgrade", ["h2c", "websocket"])
async def test_a_request_asking_to_switch_protocols_is_answered_and_ends_its_connection(
    relay, upgrade
):
    # As curl --http2 asks over plain HTTP. aiohttp's C parser dropped the request
    # pipelined behind an h2c one: it was never answered, the connection left open.
    asking = (
        "GET /health HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    ).encode()
    pipelined = b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n"
    raw = await until_closed(relay, asking + pipelined)  # closed, not left waiting
    status_line, headers, body = head_of(raw)
    assert status_line == "HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert len(body) == int(headers["content-length"])  # the one answer: resend the next


async def test_transfer_encoding_in_an_http10_request_is_400_and_closes(relay):
    smuggled = b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n"
    raw = (
        b"POST /auth/token HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smuggled
    )
    assert_refused(await until_closed(relay, raw), 400, "malformed_request")


async def test_too_many_header_fields_are_431(relay):
    fields = b"".join(b"X-Field-%d: x\r\n" % n for n in range(130))
    raw = await until_closed(relay, b"GET /health HTTP/1.1\r\nHost: relay\r\n" + fields + b"\r\n")
    assert_refused(raw, 431, "malformed_request")


@pytest.mark.parametrize(
    "line",
    [b"FOO /v1/me HTTP/1.1", b"BREW /pot HTTP/1.1", b"get /health HTTP/1.1", b"M-1 * HTTP/1.1"],
)
async def test_an_unknown_method_is_501(relay, line):
    raw = await until_closed(relay, line + b"\r\nHost: relay\r\n\r\n")
    headers = assert_refused(raw, 501, "method_not_implemented")
    assert headers["x-should-retry"] == "false"
    assert line.split()[0] not in raw  # nothing of the request is quoted


@pytest.mark.parametrize(
    "raw",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS on the plain port
        b"G(T /v1/me HTTP/1.1\r\nHost: relay\r\n\r\n",  # "(" is no token character
        b"NOT-HTTP AT ALL\r\n\r\n",  # a token, but no request line
    ],
)
async def test_what_is_no_method_at_all_stays_400(relay, raw):
    assert_refused(await until_closed(relay, raw), 400, "malformed_request")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/me HTTP/2.0\r\nHost: relay\r\n\r\n",
        b"GET /health HTTP/0.9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2's connection preface
    ],
)
async def test_another_major_http_version_is_505_and_closes(relay, raw):
    answer = await until_closed(relay, raw)
    headers = assert_refused(answer, 505, "http_version_not_supported")
    assert headers["x-should-retry"] == "false"


async def test_a_body_past_its_deadline_is_408_and_the_connection_ends(relay, monkeypatch):
    monkeypatch.setattr("relay.api.body.BODY_SECONDS", 0.3)
    _, token = await client_with_token(relay)
    reader, writer = await asyncio.open_connection(relay.host, relay.port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )

    async def drip() -> None:  # the rest of the body, slower than relay waits for it
        while True:
            writer.write(b" ")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(CLOSED_WITHIN):
            answer: Answer = await read_answer(reader)
            assert answer.status == 408
            assert answer.headers["connection"] == "close", answer.headers
            # Not kept open to swallow the body for 10 s: closed, or reset (closed with
            # the dripped bytes unread), once the 408 was out.
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
    finally:
        dripping.cancel()
        writer.close()
