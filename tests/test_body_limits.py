"""Routes whose bodies are small by nature read at most their own limit, not
RELAY_MAX_BODY_BYTES: a keyless stranger cannot make relay hold megabytes per connection."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from relay.api.admin import ADMIN_BODY_BYTES
from relay.api.auth import TOKEN_BODY_BYTES
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token, create_client


def _padded(data: dict[str, object], size: int) -> bytes:
    """`data` as JSON of exactly `size` bytes (whitespace after the opening brace)."""
    body = orjson.dumps(data)
    return b"{" + b" " * (size - len(body)) + body[1:]


def _head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: relay", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], dict]:
    """The first answer on the connection: its status, headers and JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode().strip().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    status = status_line.split(" ")[1].encode()
    if status == b"100":  # "100 Continue": relay invited the body
        return status, headers, {}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, orjson.loads(body)


def _assert_too_large(status: bytes, body: dict, limit: int) -> None:
    assert status == b"413"
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["message"] == f"The request body is larger than {limit} bytes."


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
async def test_a_token_body_declared_past_its_limit_is_refused_from_the_head(http, expect):
    # No byte of the body is sent: relay answers from Content-Length alone.
    extra = {"Expect": "100-continue"} if expect else {}
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        writer.write(_head("/auth/token", Content_Length=str(TOKEN_BODY_BYTES + 1), **extra))
        await writer.drain()
        status, headers, body = await _answer(reader)
    finally:
        writer.close()
    _assert_too_large(status, body, TOKEN_BODY_BYTES)
    if expect:  # the body it never invited is not awaited
        assert headers["connection"] == "close"


async def test_a_streamed_token_body_is_cut_off_once_past_its_limit(http):
    # Chunked, no length to refuse by: the answer comes while the body is still open,
    # so relay read (and holds) no more than the limit and the read that passed it.
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        writer.write(_head("/auth/token", Transfer_Encoding="chunked"))
        for _ in range(TOKEN_BODY_BYTES // 1024):
            writer.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        writer.write(b"1\r\n \r\n")  # one byte past the limit, and the body stalls
        await writer.drain()
        status, _, body = await _answer(reader)
    finally:
        writer.close()
    _assert_too_large(status, body, TOKEN_BODY_BYTES)


async def test_a_streamed_token_body_at_its_limit_is_read(http):
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        body = _padded({"api_key": "rk_nope"}, TOKEN_BODY_BYTES)
        writer.write(_head("/auth/token", Transfer_Encoding="chunked"))
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()
        status, _, answer = await _answer(reader)
    finally:
        writer.close()
    assert status == b"401" and answer["error"]["code"] == "invalid_api_key"


async def test_an_exchange_with_a_padded_body_at_the_limit_still_works(http):
    client = await create_client(http)
    response = await http.post(
        "/auth/token",
        data=_padded({"api_key": client["api_key"]}, TOKEN_BODY_BYTES),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["token_type"] == "Bearer"


@pytest.mark.parametrize("path", ["/auth/token", "/v1/chat/completions"])
async def test_the_app_wide_limit_caps_every_route(make_client, make_settings, path):
    small = await make_client(make_settings(max_body_bytes=2048))
    _, token = await client_with_token(small)
    body = _padded({"model": "gpt-sim", "messages": []}, 2049)

    async def chunks():  # streamed, so the limit is met while reading
        yield body[:1024]
        yield body[1024:]

    response = await small.post(
        path, data=chunks(), headers={**bearer(token), "Content-Type": "application/json"}
    )
    error = await assert_error(response, 413, "request_too_large")
    assert error["message"] == "The request body is larger than 2048 bytes."


def _metadata(size: int) -> dict[str, str]:
    """Labels of about `size` bytes of JSON in all."""
    return {f"label{n}": "x" * (size // 32 - 16) for n in range(32)}


async def test_admin_create_and_patch_take_sizable_metadata(http):
    metadata = _metadata(ADMIN_BODY_BYTES - 16 * 1024)
    response = await http.post(
        "/admin/clients", json={"name": "labelled", "metadata": metadata}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    client = await response.json()
    assert client["metadata"] == metadata
    metadata["label0"] = "changed"
    response = await http.patch(
        f"/admin/clients/{client['id']}", json={"metadata": metadata}, headers=ADMIN
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["metadata"] == metadata


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_admin_bodies_past_their_limit_are_413(http, method, chunked):
    path = "/admin/clients"
    if method == "PATCH":
        path += "/" + (await create_client(http))["id"]
    body = orjson.dumps({"name": "big", "metadata": _metadata(ADMIN_BODY_BYTES + 1024)})

    async def chunks():
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = await http.request(
        method,
        path,
        data=chunks() if chunked else body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    error = await assert_error(response, 413, "request_too_large")
    assert error["message"] == f"The request body is larger than {ADMIN_BODY_BYTES} bytes."


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat"])
async def test_chat_bodies_keep_the_app_wide_limit(http, simulator, path):
    _, token = await client_with_token(http)
    if path == "/v1/chat":
        data: dict[str, object] = {"message": "hi"}
    else:
        data = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}
    size = 16 * ADMIN_BODY_BYTES  # past both small limits, well under RELAY_MAX_BODY_BYTES
    response = await http.post(
        path,
        data=_padded(data, size),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert simulator.state.requests
