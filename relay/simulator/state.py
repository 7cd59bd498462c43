"""What the simulator saw and did, recorded for tests to assert on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

StreamEnd = Literal["completed", "disconnected", "cut"]


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One chat request as it arrived; `headers` is case-insensitive."""

    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class SimulatorState:
    """Counters change only through the methods below, which wake `wait_for`."""

    requests: list[ReceivedRequest] = field(default_factory=list)
    streams_open: int = 0
    streams_completed: int = 0
    streams_disconnected: int = 0
    streams_cut: int = 0
    # Requests whose client hung up before the simulator answered (its handler was cancelled).
    abandoned: int = 0
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False, compare=False)

    def record(self, request: ReceivedRequest) -> None:
        self.requests.append(request)
        self._changed()

    def request_abandoned(self) -> None:
        self.abandoned += 1
        self._changed()

    def stream_opened(self) -> None:
        self.streams_open += 1
        self._changed()

    def stream_closed(self, end: StreamEnd) -> None:
        self.streams_open -= 1
        if end == "completed":
            self.streams_completed += 1
        elif end == "disconnected":
            self.streams_disconnected += 1
        else:
            self.streams_cut += 1
        self._changed()

    async def wait_for(
        self, predicate: Callable[[SimulatorState], bool], timeout: float = 5.0
    ) -> None:
        """Wait until `predicate(state)` holds: a client's departure, for one, is seen
        only at the simulator's next write, some time after the client closed."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
