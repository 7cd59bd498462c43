"""The access log's numbers: bytes_out is every byte relay wrote for the response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import orjson
import pytest
from aiohttp import web

from relay.api.access_log import setup_access_log
from tests.api_calls import client_with_token

MESSAGES = [{"role": "user", "content": "Hello"}]


class Lines(logging.Handler):
    """The access log's records, by request id."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records[record.__dict__["request_id"]] = record

    async def of(self, request_id: str) -> logging.LogRecord:
        """The line of `request_id`, once its handler has ended."""
        for _ in range(200):
            if request_id in self.records:
                return self.records[request_id]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no access line for {request_id}")


@pytest.fixture
def access() -> Iterator[Lines]:
    lines, log = Lines(), logging.getLogger("relay.access")
    level = log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(lines)
        log.setLevel(level)


@pytest.fixture
async def token(http) -> str:
    return (await client_with_token(http))[1]


async def connect(http, request_id: str, token: str, body: object):
    """A connection with one chat completion request sent, its answer to be read raw."""
    reader, writer = await asyncio.open_connection(http.host, http.port)
    data = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
        + f"X-Request-Id: {request_id}\r\nAuthorization: Bearer {token}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    return reader, writer


async def wire_bytes(http, request_id: str, token: str, body: object) -> bytes:
    """Everything relay sent for the request: status line, headers, body as framed."""
    reader, writer = await connect(http, request_id, token, body)
    try:
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-sim", "messages": MESSAGES},
        {"model": "gpt-sim", "messages": MESSAGES, "stream": True},
        {"model": "no-such-model", "messages": MESSAGES},
    ],
    ids=["whole", "stream", "error"],
)
async def test_bytes_out_is_what_the_client_received(http, token, access, body):
    raw = await wire_bytes(http, "counted-1", token, body)
    line = await access.of("counted-1")
    assert raw.startswith(b"HTTP/1.1 %d " % line.status)
    assert line.bytes_out == len(raw)
    assert line.client_left is False


async def test_a_client_leaving_mid_stream_is_logged_with_what_was_written(
    http, token, access, simulator
):
    simulator.config.tokens = 2000
    simulator.config.token_delay = 0.01  # still streaming when the client leaves
    body = {"model": "gpt-sim", "messages": MESSAGES, "stream": True}
    reader, writer = await connect(http, "left-1", token, body)
    received = b""
    while received.count(b"data: ") < 5:
        received += await asyncio.wait_for(reader.read(4096), 20)
    writer.close()
    line = await access.of("left-1")
    assert line.status == 200  # the status it was sent
    assert line.client_left is True  # but not the whole answer
    assert b"[DONE]" not in received
    assert line.bytes_out >= len(received)  # not 0: relay wrote these, and maybe more


async def test_a_client_leaving_before_the_answer_began_is_logged_as_499(
    http, token, access, simulator
):
    simulator.config.first_byte_delay = 5
    body = {"model": "gpt-sim", "messages": MESSAGES}
    _, writer = await connect(http, "left-2", token, body)
    await asyncio.sleep(0.3)  # the provider is asked, and slow to answer
    writer.close()
    line = await access.of("left-2")
    assert (line.status, line.client_left, line.ttfb_ms) == (499, True, None)


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/elsewhere")


async def test_an_answer_raised_as_an_http_exception_is_counted_too(aiohttp_client, access):
    # Relay's error mapping answers every error itself; a redirect or a 204 raised as an
    # aiohttp HTTPException passes it, and is written here like any whole answer.
    app = web.Application()
    setup_access_log(app)
    app.router.add_get("/", redirect)
    http = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(http.host, http.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    [line] = access.records.values()
    assert raw.startswith(b"HTTP/1.1 302 ") and line.status == 302
    assert line.bytes_out == len(raw)
