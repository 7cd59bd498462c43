"""Clients that send a request slowly, or not at all, hold a connection for a bounded time.

A request head must arrive within the runner's `head_seconds` (here HEAD_SECONDS):
a part of one is answered 408, a connection that sent nothing is closed. An idle
kept-alive connection, a long poll, a stream and a body that arrives within its own
deadline are not cut by it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.app import create_app
from relay.config import Settings
from tests.api_calls import bearer, client_with_token, create_client
from tests.conftest import RelayTestServer, Simulator
from tests.relay_process import Answer, exchange, read_answer

HEAD_SECONDS = 0.3
# Far past HEAD_SECONDS and its sweep, far short of aiohttp's keep-alive (75 s).
CLOSED_WITHIN = 5.0


@pytest.fixture
async def relay(
    database_url: str, aiohttp_client: Callable[..., Any], settings: Settings
) -> TestClient:
    """relay on its own runner, as `relay serve` runs it, with a short head deadline."""
    server = RelayTestServer(create_app(settings))
    await server.start_server(access_log=None, head_seconds=HEAD_SECONDS)
    return await aiohttp_client(server)


async def connect(relay: TestClient) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(relay.host, relay.port)


async def send_slowly(writer: asyncio.StreamWriter, data: bytes, pause: float = 0.05) -> None:
    """`data` a byte at a time; stops quietly once relay has closed the connection."""
    for byte in data:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(pause)


async def answer_then_close(reader: asyncio.StreamReader) -> Answer:
    """The one answer relay sends, after which it closes the connection."""
    async with asyncio.timeout(CLOSED_WITHIN):
        answer = await read_answer(reader)
        assert await reader.read() == b""
    return answer


async def begin_token_exchange(
    relay: TestClient,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A token exchange's head and the first bytes of its body, sent; the rest returned."""
    client = await create_client(relay)
    body = orjson.dumps({"api_key": client["api_key"]})
    reader, writer = await connect(relay)
    writer.write(
        b"POST /auth/token HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5])
    )
    return reader, writer, body[5:]


def assert_timeout_error(answer: Answer) -> None:
    assert answer.status == 408
    assert answer.headers["content-type"] == "application/json"
    error = orjson.loads(answer.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed(relay, caplog):
    reader, writer = await connect(relay)
    with caplog.at_level(logging.INFO, "relay.api.connection"):
        async with asyncio.timeout(CLOSED_WITHIN):
            assert await reader.read() == b""  # closed, and nothing said: nothing was asked
    writer.close()
    [line] = [each for each in caplog.records if each.message == "request head timed out"]
    assert line.bytes_in == 0 and line.requests_before == 0
    assert line.waited_ms >= HEAD_SECONDS * 1000


async def test_a_head_sent_a_byte_at_a_time_is_408(relay, caplog):
    reader, writer = await connect(relay)
    secret = b"Authorization: Bearer not-for-the-log\r\n"
    writer.write(b"GET /v1/me HTTP/1.1\r\nHost: relay\r\n")
    dripping = asyncio.create_task(send_slowly(writer, secret * 10))
    with caplog.at_level(logging.INFO):
        assert_timeout_error(await answer_then_close(reader))
    dripping.cancel()
    writer.close()
    [line] = [each for each in caplog.records if each.message == "request head timed out"]
    assert line.bytes_in > len(b"GET /v1/me HTTP/1.1\r\nHost: relay\r\n")
    assert "not-for-the-log" not in caplog.text


async def test_bytes_sent_after_the_408_are_dropped_not_answered_with_a_reset(relay):
    # Closed at once, relay's kernel answered them with a reset, which discards a 408
    # the client has not read yet; relay now half-closes and reads on for a while.
    reader, writer = await connect(relay)
    writer.write(b"GET /v1/me HTTP/1.1\r\nHost: relay\r\n")
    answer = await read_answer(reader)
    writer.write(b"X-Still-Coming: " + b"z" * 1000 + b"\r\n")  # the head goes on
    await writer.drain()
    await asyncio.sleep(0.2)  # a reset, were one sent, is back by now
    assert_timeout_error(answer)
    async with asyncio.timeout(CLOSED_WITHIN):
        assert await reader.read() == b""  # the end relay sent, not a reset
    writer.close()


async def test_the_next_head_on_a_kept_alive_connection_has_a_deadline(relay):
    reader, writer = await connect(relay)
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    writer.write(b"GET /health HTTP/1.1\r\n")
    dripping = asyncio.create_task(send_slowly(writer, b"X-Slow: " + b"z" * 200))
    assert_timeout_error(await answer_then_close(reader))
    dripping.cancel()
    writer.close()


async def test_a_next_head_begun_with_the_last_request_has_a_deadline(relay):
    # Its first byte came in the packet that completed the request before it: the
    # clock starts then, not at some later byte that never comes.
    reader, writer = await connect(relay)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\nG")
    assert (await read_answer(reader)).status == 200
    assert_timeout_error(await answer_then_close(reader))
    writer.close()


async def test_a_next_head_begun_while_a_request_is_answered_has_a_deadline(relay):
    _, token = await client_with_token(relay)
    reader, writer = await connect(relay)
    writer.write(
        b"GET /v1/history?wait=1 HTTP/1.1\r\nHost: relay\r\n"
        + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await asyncio.sleep(0.1)  # the long poll is held
    writer.write(b"G")  # and the next head begins behind it, and stops
    assert (await read_answer(reader)).status == 200
    assert_timeout_error(await answer_then_close(reader))
    writer.close()


async def test_a_body_ending_in_its_own_packet_starts_no_head_clock(relay):
    # The last bytes of a body are not the next head: the connection then idles.
    reader, writer, rest = await begin_token_exchange(relay)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(rest)
    assert (await read_answer(reader)).status == 200
    await asyncio.sleep(HEAD_SECONDS * 4)
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    writer.close()


async def test_pipelined_whole_heads_are_all_answered(relay):
    reader, writer = await connect(relay)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n" * 3)
    for _ in range(3):
        assert (await read_answer(reader)).status == 200
    await asyncio.sleep(HEAD_SECONDS * 4)  # idle after them: not cut
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    writer.close()


async def test_an_idle_kept_alive_connection_outlives_the_head_deadline(relay):
    reader, writer = await connect(relay)
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    await asyncio.sleep(HEAD_SECONDS * 4)  # idle: aiohttp's keep-alive bounds this
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    writer.close()


async def test_a_long_poll_outlives_the_head_deadline(relay):
    _, token = await client_with_token(relay)
    response = await relay.get("/v1/history?wait=1", headers=bearer(token))
    assert response.status == 200, await response.text()


async def test_a_stream_outlives_the_head_deadline(relay, simulator: Simulator):
    simulator.config.tokens, simulator.config.token_delay = 5, HEAD_SECONDS / 2
    _, token = await client_with_token(relay)
    response = await relay.post(
        "/v1/chat/completions",
        json={"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=bearer(token),
    )
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")


async def test_a_body_slower_than_the_head_deadline_is_read(relay):
    reader, writer, rest = await begin_token_exchange(relay)
    await asyncio.sleep(HEAD_SECONDS * 3)
    writer.write(rest)
    answer = await read_answer(reader)
    assert answer.status == 200, answer.body
    writer.close()


@pytest.mark.parametrize("path", ["/auth/token", "/v1/chat/completions"])
async def test_a_body_sent_a_byte_at_a_time_is_408(relay, monkeypatch, path):
    monkeypatch.setattr("relay.api.body.BODY_SECONDS", HEAD_SECONDS)
    _, token = await client_with_token(relay)
    reader, writer = await connect(relay)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
    )
    dripping = asyncio.create_task(send_slowly(writer, b"{" + b" " * 999))
    async with asyncio.timeout(CLOSED_WITHIN):
        answer = await read_answer(reader)
    assert answer.status == 408
    assert orjson.loads(answer.body)["error"]["code"] == "request_timeout"
    await asyncio.sleep(0.2)  # more of the body arrives: dropped, not answered with a reset
    async with asyncio.timeout(CLOSED_WITHIN):
        assert await reader.read() == b""
    dripping.cancel()
    writer.close()


async def test_a_body_drained_after_its_answer_is_no_head_to_time(relay):
    # Answered (401) before its body was read; aiohttp drains the rest after the answer,
    # and the connection, idle then, is kept alive, not cut with a 408 nobody asked for.
    reader, writer = await connect(relay)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json"
        b"\r\nContent-Length: 100\r\n\r\n" + b" " * 10
    )
    assert (await read_answer(reader)).status == 401
    writer.write(b" " * 90)
    await asyncio.sleep(HEAD_SECONDS * 4)
    assert (await exchange(reader, writer, "GET", "/health")).status == 200
    writer.close()


async def test_a_client_that_takes_no_bytes_of_an_answer_is_cut_off(caplog):
    """Else relay holds the answer (pages of history, a whole completion) in memory for
    as long as the client keeps its connection."""

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (32 * 1024 * 1024))  # past any socket's buffers

    app = web.Application()
    app.router.add_get("/large", large)
    server = RelayTestServer(app)
    await server.start_server(access_log=None, send_seconds=0.5)
    loop = asyncio.get_running_loop()
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, (server.host, server.port))
        await loop.sock_sendall(client, b"GET /large HTTP/1.1\r\nHost: relay\r\n\r\n")
        relay = server.runner.server
        with caplog.at_level(logging.INFO, "relay.api.connection"):
            async with asyncio.timeout(CLOSED_WITHIN):
                await until(lambda: bool(relay.connections))  # the request arrives
                # and its connection is dropped, the answer unread
                await until(lambda: not relay.connections)
    assert any(each.message == "client took no bytes of its answer" for each in caplog.records)
    await server.close()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.02)
