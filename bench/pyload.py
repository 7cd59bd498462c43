"""Non-streamed load from Python, for a machine without wrk. It shares the load core
with the simulator and saturates sooner than wrk: its rates are a lower bound."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp

from bench.figures import RequestFigures, percentile
from bench.stack import Target

_MAX_REQUESTS = 2_000_000


async def run_python_load(
    target: Target, body: bytes, *, connections: int, seconds: float
) -> RequestFigures:
    url = f"http://{target.host}:{target.port}{target.path}"
    headers = {"Content-Type": "application/json", **target.headers}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = clock()
        deadline = started + seconds

        async def worker() -> None:
            while clock() < deadline and len(latencies) < _MAX_REQUESTS:
                sent = clock()
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        if answer.status != 200:
                            errors[f"status {answer.status}"] += 1
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(clock() - sent)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = clock() - started
    return RequestFigures(
        requests=len(latencies),
        seconds=round(elapsed, 3),
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        mean_ms=sum(latencies) / len(latencies) * 1000 if latencies else 0.0,
        max_ms=max(latencies, default=0.0) * 1000,
        errors=sum(errors.values()),
        error_kinds=dict(errors),
    )
