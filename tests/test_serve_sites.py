"""Where `relay serve` listens: a Unix socket another process serves is never taken over."""

from __future__ import annotations

import asyncio
import errno
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from relay.commands.serve import relay_runner, start_sites
from relay.config import Settings


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def runner() -> AsyncIterator[web.AppRunner]:
    app = web.Application()
    app.router.add_get("/health", _health)
    runner = relay_runner(app)
    await runner.setup()
    yield runner
    await runner.cleanup()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-") as name:
        yield Path(name) / "relay.sock"


async def test_a_socket_another_process_serves_is_refused(runner, socket_path):
    # asyncio would remove the socket file and listen in its place: the other
    # instance would run on, unreachable.
    other = await asyncio.start_unix_server(lambda reader, writer: writer.close(), socket_path)
    try:
        with pytest.raises(OSError) as refused:
            await start_sites(runner, Settings(unix_socket=str(socket_path)))
        assert refused.value.errno == errno.EADDRINUSE
        assert "another process is serving on it" in str(refused.value)
        assert socket_path.is_socket()  # still the other process's
    finally:
        other.close()
        await other.wait_closed()


async def test_a_stale_socket_is_replaced(runner, socket_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))  # bound, never listening: what a killed process leaves
    stale.close()
    sites = await start_sites(runner, Settings(unix_socket=str(socket_path)))
    assert len(sites) == 1
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()
