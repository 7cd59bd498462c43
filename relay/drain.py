"""Graceful stop: what is still in flight, and the events that tell it relay is stopping.

Every request is counted by `relay.api.drain`'s middleware, so `relay serve`
waits for it on SIGTERM. Long-lived handlers also wrap their stream in
`app[IN_FLIGHT].track()`, which counts it in `relay_open_streams` and hands
back the `deadline` event: once it is set the drain timeout has passed, and
the stream should send a final error event and end. Long polls watch
`draining` and answer early.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from relay.metrics import OPEN_STREAMS


class InFlight:
    """Counts requests and streams in progress; carries the draining and deadline events."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.deadline = asyncio.Event()
        self.requests = 0
        self.streams = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_deadline: set[Callable[[], object]] = set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one request until its answer is complete (the middleware does this)."""
        self.requests += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.requests -= 1
            if self.requests == 0:
                self._idle.set()

    @contextlib.contextmanager
    def track(self, on_deadline: Callable[[], object] | None = None) -> Iterator[asyncio.Event]:
        """Count one open stream; yields `deadline`, set when it must end now.

        `on_deadline` runs once if the deadline passes while the stream is open
        (a stream closes its provider response, which ends its read loop).
        """
        self.streams += 1
        OPEN_STREAMS.inc()
        try:
            with self.watch(on_deadline):
                yield self.deadline
        finally:
            self.streams -= 1
            OPEN_STREAMS.dec()

    @contextlib.contextmanager
    def watch(self, on_deadline: Callable[[], object] | None) -> Iterator[asyncio.Event]:
        """Run `on_deadline` once if the deadline passes inside the block (a request
        waiting for its provider's whole answer gives up on it); yields `deadline`.
        A set entry, not a task per request: most requests never see a deadline."""
        if on_deadline is None:
            yield self.deadline
            return
        self._on_deadline.add(on_deadline)
        if self.deadline.is_set():  # begun after the deadline (a kept-alive connection's)
            on_deadline()
        try:
            yield self.deadline
        finally:
            self._on_deadline.discard(on_deadline)

    def end_now(self) -> None:
        """The drain's deadline: whatever is still open must end at once."""
        if self.deadline.is_set():
            return
        self.deadline.set()
        for on_deadline in list(self._on_deadline):
            on_deadline()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False when `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
