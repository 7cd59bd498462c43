"""What one run against one target measured, in JSON-ready dataclasses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted values (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Usage:
    """How busy the machine was during a run: relay's core and the load core."""

    server_cpu: float = 0.0  # CPU seconds of the target's server process per wall second
    server_core_busy: float = 0.0  # whole core, other processes included
    load_core_busy: float = 0.0  # load generator + simulator + PostgreSQL + Redis
    client_cpu: float = 0.0  # this process: the streaming load generator (wrk is a child)
    # Server-core time used by neither relay nor the baseline: other work on the machine.
    # Above a few percent the run was disturbed and its figures are not relay's.
    foreign_on_server_core: float = 0.0
    listen_overflows: int = 0  # machine-wide, during the run (see cores.listen_overflows)


@dataclass
class RequestFigures:
    """Non-streamed requests: a rate and a latency distribution."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


@dataclass
class StreamFigures:
    """Concurrent streams in steady state: first token, token rate, stalls."""

    concurrency: int
    streams: int  # completed streams that started inside the window
    window_seconds: float
    tokens_per_s: float  # content tokens received inside the window, per second
    ideal_tokens_per_s: float  # what `concurrency` streams at the simulator's pace would carry
    ttft_p50_ms: float
    ttft_p99_ms: float
    worst_gap_ms: float  # the longest pause between two token reads of any stream
    gap_p99_ms: float  # p99 of each stream's longest pause
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
