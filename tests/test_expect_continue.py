"""`Expect: 100-continue`: the body is invited only once relay would read it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.api_calls import client_with_token

BODY = orjson.dumps({"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]})


def _head(
    path: str,
    headers: dict[str, str],
    length: int = len(BODY),
    content_type: str = "application/json",
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: relay", f"Content-Type: {content_type}"]
    lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _first_answer(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def test_the_body_is_invited_once_the_checks_passed_then_answered(http, simulator):
    _, token = await client_with_token(http)
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        headers = {"Authorization": f"Bearer {token}", "Expect": "100-continue"}
        writer.write(_head("/v1/chat/completions", headers))
        await writer.drain()
        assert await _first_answer(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        await writer.drain()
        assert (await _first_answer(reader)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    assert simulator.state.requests


@pytest.mark.parametrize(
    ("headers", "length", "status", "content_type"),
    [
        ({}, len(BODY), b"401", "application/json"),  # no token
        ({"Authorization": "Bearer not-a-token"}, len(BODY), b"401", "application/json"),
        # A good token, and a body past RELAY_MAX_BODY_BYTES, or not JSON.
        (None, 10**9, b"413", "application/json"),
        (None, len(BODY), b"415", "text/plain"),
    ],
    ids=["no-token", "bad-token", "too-large", "not-json"],
)
async def test_a_request_refused_by_its_head_is_answered_without_inviting_its_body(
    http, simulator, headers, length, status, content_type
):
    # RFC 9110 section 10.1.1: a final status the head decides is sent instead of 100.
    if headers is None:
        headers = {"Authorization": f"Bearer {(await client_with_token(http))[1]}"}
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        expecting = {**headers, "Expect": "100-continue"}
        writer.write(_head("/v1/chat/completions", expecting, length, content_type))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # relay closes the connection
    finally:
        writer.close()
    assert answer.split(b" ", 2)[1] == status
    assert b"100 Continue" not in answer
    assert b"Connection: close" in answer  # the body it never invited is not awaited
    assert not simulator.state.requests


async def test_an_expectation_relay_cannot_meet_is_a_417_like_any_other_error(http):
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        writer.write(_head("/auth/token", {"Expect": "something-else"}))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # relay closes the connection
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 417 ")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert orjson.loads(body)["error"]["code"] == "expectation_failed"
    # Through relay's middlewares, as every answer: a request id, the security headers.
    lines = head.decode().lower().split("\r\n")
    assert any(line.startswith("x-request-id: ") for line in lines), head
    assert "x-content-type-options: nosniff" in lines, head
    assert "connection: close" in lines
