"""What a test does through relay's API, written once: admin calls and the token exchange."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_client(http: TestClient, **fields: Any) -> dict[str, Any]:
    response = await http.post(
        "/admin/clients", json={"name": "test client", **fields}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def exchange(http: TestClient, api_key: str) -> str:
    response = await http.post("/auth/token", json={"api_key": api_key})
    assert response.status == 200, await response.text()
    return (await response.json())["access_token"]


async def client_with_token(http: TestClient, **fields: Any) -> tuple[dict[str, Any], str]:
    client = await create_client(http, **fields)
    return client, await exchange(http, client["api_key"])


async def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` in OpenAI's error shape (and has `code`, when given)."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def post_and_never_read(
    http: TestClient, path: str, token: str, body: bytes
) -> socket.socket:
    """Send a POST on a socket with a tiny receive buffer, then read nothing: a client
    that stays connected but takes no bytes. The caller closes the socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (http.host, http.port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode() + body)
    return sock


async def raw_exchange(http: TestClient, raw: bytes, *later: bytes) -> bytes:
    """Send `raw` bytes as they are (no HTTP client would send them), then each of
    `later` a moment after the one before, and read until relay closes the connection."""
    reader, writer = await asyncio.open_connection(http.host, http.port)
    try:
        for index, part in enumerate((raw, *later)):
            if index:
                await asyncio.sleep(0.1)  # relay has handed the head on by now
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
