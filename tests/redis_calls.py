"""What tests of relay's Redis side do, written once: hang a Redis, wait for a state."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from relay.devservers import RedisServer


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


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
