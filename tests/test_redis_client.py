"""relay's Redis client sends each command once: a rate-limit check whose reply was
lost may have run, and sent again it would be charged twice."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_errors

from relay.stores.redis_connection import open_redis


async def test_a_command_whose_connection_breaks_is_not_sent_again():
    scripts_run = 0

    async def hang_up_on_a_script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Redis enough for a client to connect: it answers PING and the connection's
        setup, and hangs up on EVALSHA as if the reply were lost."""
        nonlocal scripts_run
        while data := await reader.read(65536):
            if b"EVALSHA" in data.upper():
                scripts_run += 1
                break
            commands = data.count(b"\n*") + data.startswith(b"*")
            writer.write(b"+PONG\r\n" if b"PING" in data.upper() else b"+OK\r\n" * commands)
        writer.close()

    server = await asyncio.start_server(hang_up_on_a_script, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = await open_redis(f"redis://127.0.0.1:{port}/0", timeout=2.0)
        try:
            with pytest.raises(redis_errors.ConnectionError):
                await client.evalsha("0" * 40, 1, "bucket", "1")
        finally:
            await client.aclose()
    assert scripts_run == 1
