"""What tests of relay's Redis side do, written once: hang a Redis, lose its reply, take
it away from a limiter, wait for a state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

from relay.devservers import RedisServer
from relay.services.ratelimit import RateLimiter


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """Redis hung: its socket stays open and takes commands, nothing answers."""
    assert server._proc is not None
    pid = server._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def redis_away(limiter: RateLimiter) -> asyncio.Event:
    """Take Redis away from `limiter` (it is there all along: its probe waits) until
    the event returned is set; then the probe brings it back at once."""
    back = asyncio.Event()
    probe = limiter.link._probe

    async def probe_once_back() -> object:
        await back.wait()
        return await probe()

    limiter.link._probe = probe_once_back
    limiter.link.retry = 0.01
    limiter.link.lost(ConnectionError("Redis went away"))
    return back


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


class ReplyCutter:
    """A TCP proxy to Redis that can lose a script's reply: it passes the next EVALSHA
    on, then closes that connection as Redis's reply comes back. Redis ran the script;
    its sender hears only that the connection broke."""

    def __init__(self, redis_url: str) -> None:
        self._target = urlsplit(redis_url)
        self.url = ""  # to reach Redis through it, once started
        self.cut = 0  # replies lost so far
        self._cutting = False
        self._writers: list[asyncio.StreamWriter] = []

    def cut_next_script(self) -> None:
        self._cutting = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target.hostname, self._target.port
        up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers += [writer, up_writer]
        losing = False  # this connection's next reply

        async def ask() -> None:
            nonlocal losing
            while data := await reader.read(65536):
                if self._cutting and b"EVALSHA" in data.upper():
                    self._cutting, losing = False, True
                up_writer.write(data)

        async def answer() -> None:
            while data := await up_reader.read(65536):
                if losing:
                    self.cut += 1
                    break
                writer.write(data)
            writer.close()
            up_writer.close()

        with contextlib.suppress(Exception):  # either side closing ends both
            await asyncio.gather(ask(), answer())


@asynccontextmanager
async def reply_cutter(redis_url: str) -> AsyncIterator[ReplyCutter]:
    cutter = ReplyCutter(redis_url)
    server = await asyncio.start_server(cutter._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cutter.url = cutter._target._replace(netloc=f"127.0.0.1:{port}").geturl()
    try:
        yield cutter
    finally:
        server.close()
        for writer in cutter._writers:
            writer.close()
