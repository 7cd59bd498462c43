"""The streaming load generator: many concurrent SSE streams over raw HTTP/1.1 keep-alive
connections, lean enough to share one core with the simulator.

Each read costs one timestamp, one `bytes.count` for token events and a tail check
for the end of the chunked body; nothing is parsed. Workers start spread over one
stream's duration, so the window that is measured holds a steady `concurrency`
streams rather than one synchronised wave.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from bench.figures import StreamFigures, percentile
from bench.stack import Target

# Present in every content-token chunk and in no other (the role chunk's delta opens with "role").
TOKEN = b'"delta":{"content":'
_TAIL = len(TOKEN) - 1  # enough to find a marker split across two reads
_BODY_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body
_DONE = b"[DONE]"
_MAX_STREAMS = 1_000_000
clock = time.perf_counter


@dataclass
class _Totals:
    """Shared by every connection of one run."""

    window_start: float
    window_end: float
    expected_tokens: int
    window_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class _Connection(asyncio.Protocol):
    """One kept-alive connection carrying one stream at a time."""

    def __init__(self, totals: _Totals) -> None:
        self.totals = totals
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[str] | None = None
        self.head: bytes | None = None
        self.tail = b""
        self.sent = self.first = self.last = self.max_gap = 0.0
        self.tokens = 0
        self.seen_done = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[str]:
        """Start a stream; the future gives "ok" or what went wrong."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.head, self.tail = b"", b""
        self.tokens, self.max_gap, self.seen_done = 0, 0.0, False
        self.sent = clock()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = clock()
        if self.done is None or self.done.done():
            return
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = None
            if not head.startswith(b"HTTP/1.1 200"):
                self._end(f"status {head[9:12].decode(errors='replace')}")
                return
        buffer = self.tail + data
        count = buffer.count(TOKEN)
        if count:
            if self.tokens:
                gap = now - self.last
                if gap > self.max_gap:
                    self.max_gap = gap
            else:
                self.first = now
            self.last = now
            self.tokens += count
            totals = self.totals
            if totals.window_start <= now < totals.window_end:
                totals.window_tokens += count
        if not self.seen_done and _DONE in buffer:
            self.seen_done = True
        if buffer.endswith(_BODY_END):
            if self.seen_done:
                self._finish()
            else:  # relay ends a failed stream with an error event instead of [DONE]
                self._end("ended without [DONE]")
        self.tail = buffer[-_TAIL:]

    def _finish(self) -> None:
        totals = self.totals
        if self.tokens != totals.expected_tokens:
            self._end(f"{self.tokens} of {totals.expected_tokens} tokens")
            return
        if self.sent >= totals.window_start:
            totals.ttft.append(self.first - self.sent)
            totals.gaps.append(self.max_gap)
        self._end("ok")

    def _end(self, outcome: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head is not None:
            where = "before the response" if self.head == b"" else "in the response head"
        else:
            where = "mid-stream"
        reason = f" ({type(exc).__name__})" if exc is not None else ""
        self._end(f"connection lost {where}{reason}")


def stream_request(target: Target, body: bytes) -> bytes:
    headers = "".join(f"{name}: {value}\r\n" for name, value in target.headers.items())
    return (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run_streams(
    target: Target,
    body: bytes,
    *,
    concurrency: int,
    stream_duration: float,
    window: float,
    expected_tokens: int,
    timeout: float = 60.0,
) -> StreamFigures:
    """`concurrency` workers loop streams; measured from the end of the ramp for `window` s."""
    loop = asyncio.get_running_loop()
    request = stream_request(target, body)
    ramp = max(stream_duration, 0.05)
    start = clock()
    totals = _Totals(start + ramp, start + ramp + window, expected_tokens)
    started = 0

    async def worker(index: int) -> None:
        nonlocal started
        await asyncio.sleep(ramp * index / concurrency)
        connection: _Connection | None = None
        while clock() < totals.window_end and started < _MAX_STREAMS:
            if connection is None or connection.lost:
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(totals), target.host, target.port
                    )
                except OSError as exc:
                    totals.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.1)
                    continue
            started += 1
            try:
                outcome = await asyncio.wait_for(connection.send(request), timeout)
            except TimeoutError:
                outcome = "timeout"
            if outcome == "ok":
                totals.completed += 1
                continue
            totals.errors[outcome] += 1
            assert connection.transport is not None
            connection.transport.close()  # the connection's state is unknown: start afresh
            connection = None
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    # Collections mid-window would show up as gaps that are the client's, not the server's.
    gc.disable()
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        gc.enable()
    ttft, gaps = totals.ttft, totals.gaps
    return StreamFigures(
        concurrency=concurrency,
        streams=len(ttft),
        window_seconds=window,
        tokens_per_s=totals.window_tokens / window,
        ideal_tokens_per_s=concurrency * expected_tokens / stream_duration
        if stream_duration
        else 0,
        ttft_p50_ms=percentile(ttft, 50) * 1000,
        ttft_p99_ms=percentile(ttft, 99) * 1000,
        worst_gap_ms=max(gaps, default=0.0) * 1000,
        gap_p99_ms=percentile(gaps, 99) * 1000,
        errors=sum(totals.errors.values()),
        error_kinds=dict(totals.errors),
    )
