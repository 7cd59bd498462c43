"""The benchmark's knobs (`make bench BENCH_ARGS="..."`)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Phase names, in the order they run; numbers are the phase numbers.
PHASES = (
    "latency", "rate", "streams", "many-streams", "history", "limits", "receipts", "instructions",
)  # fmt: skip
_ALIASES = {"1": "latency", "2": "rate", "3": "streams", "4": "many-streams"}


@dataclass(frozen=True)
class BenchOptions:
    phases: tuple[str, ...]
    latency_seconds: float  # phase 1, per target
    rate_seconds: float  # phase 2 and each comparison side, per target
    connections: int  # phase 2 concurrency
    streams: int  # phase 3 concurrency
    many_streams: int  # phase 4 concurrency
    stream_seconds: float  # streaming phases: the steady-state window after the ramp
    comparison_seconds: float  # each side of an on/off comparison, per round
    comparison_rounds: int
    tokens: int
    token_delay_ms: float
    warmup_seconds: float
    instruction_requests: int  # the instructions phase: requests counted per configuration
    client: str  # wrk | python: who drives the non-streamed phases
    pg_fast: bool
    results_dir: Path
    keep: bool

    @property
    def stream_duration(self) -> float:
        """How long one stream lasts at the simulator's pace."""
        return self.tokens * self.token_delay_ms / 1000


def _phases(raw: str) -> tuple[str, ...]:
    names = {_ALIASES.get(word, word) for word in raw.replace(" ", "").split(",") if word}
    unknown = names - set(PHASES)
    if unknown:
        known = ", ".join(PHASES)
        raise argparse.ArgumentTypeError(f"unknown phase {sorted(unknown)[0]!r}; known: {known}")
    return tuple(name for name in PHASES if name in names)


def parse_options(argv: Sequence[str] | None = None) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="relay against the simulator (direct) and a bare aiohttp proxy (baseline)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run; figures are rough")
    parser.add_argument(
        "--phases", type=_phases, default=PHASES, help=f"comma list of {','.join(PHASES)} or 1-4"
    )
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--rate-seconds", type=float)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int)
    parser.add_argument("--many-streams", type=int)
    parser.add_argument("--stream-seconds", type=float)
    parser.add_argument("--comparison-seconds", type=float)
    parser.add_argument("--comparison-rounds", type=int)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float)
    parser.add_argument("--instruction-requests", type=int)
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="non-streamed load generator (auto: wrk when installed)",
    )
    parser.add_argument(
        "--pg-fast",
        action="store_true",
        help="run PostgreSQL without fsync (not what production does)",
    )
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and its logs")
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: float | None, full: float, fast: float) -> float:
        return value if value is not None else (fast if quick else full)

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    return BenchOptions(
        phases=args.phases,
        latency_seconds=pick(args.latency_seconds, 5, 1),
        rate_seconds=pick(args.rate_seconds, 8, 1),
        connections=args.connections,
        streams=int(pick(args.streams, 100, 10)),
        many_streams=int(pick(args.many_streams, 1000, 50)),
        stream_seconds=pick(args.stream_seconds, 8, 1),
        # Four short alternating rounds: on this kind of shared machine a ratio from
        # two long ones swung by ±15% between runs.
        comparison_seconds=pick(args.comparison_seconds, 4, 1),
        comparison_rounds=int(pick(args.comparison_rounds, 4, 1)),
        tokens=args.tokens,
        token_delay_ms=args.token_delay_ms,
        warmup_seconds=pick(args.warmup_seconds, 1, 0),
        instruction_requests=int(pick(args.instruction_requests, 320, 64)),
        client=client,
        pg_fast=args.pg_fast,
        results_dir=args.results_dir,
        keep=args.keep,
    )
