"""Graceful stop: what is still in flight, and the events that tell it relay is stopping.

Every request is counted by `relay.api.drain`'s middleware, so `relay serve`
waits for it on SIGTERM. Long-lived handlers also wrap their stream in
`app[IN_FLIGHT].track()`, which counts it in `relay_open_streams` and hands
back its `Stop`: once set (the drain timeout has passed, or its client was
revoked) the stream should send `Stop.error` as a final error event and end.
Long polls watch `draining` and answer early, and a revoked client's with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from relay.errors import RelayError, RestartingError
from relay.metrics import OPEN_STREAMS

# Whom a stream answers: (client id, the key version its token was issued at).
Holder = tuple[str, int]


class Stop:
    """Whether, and why, one open stream or held poll must end now."""

    __slots__ = ("_on_stop", "error", "key_version")

    def __init__(self, on_stop: Callable[[], object] | None, key_version: int = 0) -> None:
        self.error: RelayError | None = None
        self.key_version = key_version
        self._on_stop = on_stop

    def is_set(self) -> bool:
        return self.error is not None

    def end(self, error: RelayError) -> None:
        """Set once, with what its client is told; runs `on_stop` (which closes the
        provider's response, ending the stream's read loop)."""
        if self.error is not None:
            return
        self.error = error
        if self._on_stop is not None:
            self._on_stop()

    def at_deadline(self) -> None:
        self.end(RestartingError())


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
        # Open streams and held polls by client id, for revoke().
        self._held: dict[str, set[Stop]] = {}
        # Told the client id and Stop of each stream or poll as it opens (the client
        # cache checks a client that changed since its request was admitted).
        self.on_hold: Callable[[str, Stop], object] | None = None

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
    def track(
        self, on_deadline: Callable[[], object] | None = None, holder: Holder | None = None
    ) -> Iterator[Stop]:
        """Count one open stream; yields its `Stop`, set when it must end now.

        `on_deadline` runs once if the deadline passes while the stream is open, or
        its `holder` is revoked (a stream closes its provider response, which ends
        its read loop).
        """
        self.streams += 1
        OPEN_STREAMS.inc()
        try:
            with self.revocable(holder, on_deadline) as stop, self.watch(stop.at_deadline):
                yield stop
        finally:
            self.streams -= 1
            OPEN_STREAMS.dec()

    @contextlib.contextmanager
    def revocable(
        self, holder: Holder | None, on_stop: Callable[[], object] | None
    ) -> Iterator[Stop]:
        """A `Stop` that revoke() sets while the block runs (once per stream or poll,
        nothing per event)."""
        if holder is None:
            yield Stop(on_stop)
            return
        client_id, key_version = holder
        stop = Stop(on_stop, key_version)
        held = self._held.setdefault(client_id, set())
        held.add(stop)
        if self.on_hold is not None:
            self.on_hold(client_id, stop)
        try:
            yield stop
        finally:
            held.discard(stop)
            if not held and self._held.get(client_id) is held:
                del self._held[client_id]

    def held_clients(self) -> list[str]:
        return list(self._held)

    def holds(self, client_id: str) -> bool:
        """Whether a stream or poll of this client is open here."""
        return client_id in self._held

    def revoke(
        self, client_id: str, valid_version: int | None, error: Callable[[], RelayError]
    ) -> int:
        """End, with `error()`, what this client holds open at any key version but
        `valid_version` (None: at every one); how many ended."""
        ended = 0
        for stop in list(self._held.get(client_id, ())):
            if stop.key_version != valid_version and not stop.is_set():
                stop.end(error())
                ended += 1
        return ended

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
