"""The phases: each load run against direct, baseline and relay, and the on/off comparisons."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bench.cores import (
    LOAD_CORE,
    SERVER_CORE,
    CoreTimes,
    listen_overflows,
    peak_rss_mb,
    process_cpu_seconds,
)
from bench.figures import RequestFigures, StreamFigures, Usage
from bench.instructions import Bodies, Counted, callgrind_available, measure_instructions
from bench.options import BenchOptions
from bench.pyload import run_python_load
from bench.stack import MODEL, Stack, Target, relay_setting_exists
from bench.streams import run_streams
from bench.wrk import run_wrk

_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
BODY = orjson.dumps({"model": MODEL, "messages": _MESSAGES})
NO_STORE_BODY = orjson.dumps({"model": MODEL, "messages": _MESSAGES, "store": False})
STREAM_BODY = orjson.dumps({"model": MODEL, "messages": _MESSAGES, "stream": True})
TARGETS = ("direct", "baseline", "relay")
# relay's switches for the comparisons: (phase, variable that turns the feature off).
SWITCHES = (("limits", "RELAY_RATE_LIMITS"), ("receipts", "RELAY_RECEIPTS"))

Figures = TypeVar("Figures", RequestFigures, StreamFigures)
Results = dict[str, Any]


async def measured(target: Target, run: Callable[[], Awaitable[Figures]]) -> Figures:
    """Run, and record how busy the target's server and both cores were meanwhile."""
    cores, cpu, started = CoreTimes.now(), process_cpu_seconds(target.server_pid), time.monotonic()
    client, overflows = time.process_time(), listen_overflows()
    figures = await run()
    wall = time.monotonic() - started
    now = CoreTimes.now()
    server_cpu = (process_cpu_seconds(target.server_pid) - cpu) / wall
    server_core_busy = now.busy_since(cores, SERVER_CORE)
    ours = server_cpu if target.on_server_core else 0.0
    figures.usage = Usage(
        server_cpu=round(server_cpu, 3),
        client_cpu=round((time.process_time() - client) / wall, 3),
        server_core_busy=round(server_core_busy, 3),
        load_core_busy=round(now.busy_since(cores, LOAD_CORE), 3),
        foreign_on_server_core=round(max(0.0, server_core_busy - ours), 3),
        listen_overflows=listen_overflows() - overflows,
    )
    return figures


def _cpu(usage: Usage) -> str:
    return (
        f"  (server cpu {usage.server_cpu:.0%}, client cpu {usage.client_cpu:.0%},"
        f" load core {usage.load_core_busy:.0%}, others on server core"
        f" {usage.foreign_on_server_core:.0%}, listen overflows {usage.listen_overflows})"
    )


class PhaseRunner:
    def __init__(
        self, stack: Stack, options: BenchOptions, workdir: Path, say: Callable[[str], None]
    ) -> None:
        self.stack = stack
        self.options = options
        self.workdir = workdir
        self.say = say

    async def requests(
        self, target: Target, body: bytes, *, connections: int, seconds: float
    ) -> RequestFigures:
        async def load(duration: float) -> RequestFigures:
            if self.options.client == "wrk":
                return await run_wrk(
                    target, body, connections=connections, seconds=duration, workdir=self.workdir
                )
            return await run_python_load(target, body, connections=connections, seconds=duration)

        if self.options.warmup_seconds > 0:
            await load(self.options.warmup_seconds)
        figures = await measured(target, lambda: load(seconds))
        self.say(
            f"  {target.name:<9.30} {figures.rps:9.0f} req/s  p50 {figures.p50_ms:7.2f} ms"
            f"  p99 {figures.p99_ms:7.2f} ms  errors {figures.errors}" + _cpu(figures.usage)
        )
        return figures

    async def streams(self, target: Target, concurrency: int) -> StreamFigures:
        options = self.options
        figures = await measured(
            target,
            lambda: run_streams(
                target,
                STREAM_BODY,
                concurrency=concurrency,
                stream_duration=options.stream_duration,
                window=options.stream_seconds,
                expected_tokens=options.tokens,
            ),
        )
        self.say(
            f"  {target.name:<9} {figures.tokens_per_s:9.0f} tok/s"
            f"  ttft p50 {figures.ttft_p50_ms:7.2f} p99 {figures.ttft_p99_ms:7.2f} ms"
            f"  worst gap {figures.worst_gap_ms:6.1f} ms"
            f"  errors {figures.errors}" + _cpu(figures.usage)
        )
        return figures

    async def run(self) -> Results:
        options, stack = self.options, self.stack
        results: Results = {}
        targets = stack.targets()
        if "latency" in options.phases:
            self.say("phase 1: one request at a time")
            results["latency"] = {
                name: await self.requests(
                    targets[name], BODY, connections=1, seconds=options.latency_seconds
                )
                for name in TARGETS
            }
        if "rate" in options.phases:
            self.say(f"phase 2: non-streamed, {options.connections} connections")
            results["rate"] = {name: await self.rate(targets[name]) for name in TARGETS}
        for phase, concurrency in (
            ("streams", options.streams),
            ("many-streams", options.many_streams),
        ):
            if phase in options.phases:
                self.say(
                    f"phase {phase}: {concurrency} concurrent streams of {options.tokens} tokens"
                )
                results[phase] = {
                    name: await self.streams(targets[name], concurrency) for name in TARGETS
                }
        # Read before the comparisons: the process that carried every phase so far.
        results["memory"] = {
            "relay_peak_rss_mb": round(peak_rss_mb(stack.relay_target().server_pid), 1),
            "baseline_peak_rss_mb": round(peak_rss_mb(targets["baseline"].server_pid), 1),
        }
        if "history" in options.phases:
            self.say('history on (default) vs off ("store": false), on a fresh relay')
            # Fresh: the relay that carried 1,000 streams is still finishing their work
            # (commits, debits, closing connections) for a while, slower meanwhile.
            relay = stack.start_variant({})
            try:
                results["history"] = await self.compare((relay, BODY), (relay, NO_STORE_BODY))
            finally:
                stack.stop_variant(relay)
        for phase, variable in SWITCHES:
            if phase in options.phases:
                results[phase] = await self.switch(phase, variable)
        if "instructions" in options.phases:
            results["instructions"] = await self.instructions()
        return results

    async def instructions(self) -> Results:
        if not callgrind_available():
            self.say("instructions: skipped, valgrind (callgrind) is not installed")
            return {"skipped": "valgrind is not installed"}
        requests = self.options.instruction_requests
        self.say(f"instructions per request under callgrind ({requests} requests each)")
        counted = await measure_instructions(
            self.stack,
            Bodies(BODY, NO_STORE_BODY, STREAM_BODY),
            self.workdir,
            requests,
            # A run without warm-ups (--quick) counts without them too: rough figures.
            rough=self.options.warmup_seconds == 0,
        )
        for name, figures in counted.items():
            self.say(
                f"  {name:<32} {figures.instructions_per_request / 1e6:6.3f} M instructions"
                f"  {figures.reads_per_request:5.1f} reads"
                f" ({figures.instructions_per_read / 1e3:4.0f} K instructions each)"
                f"  errors {figures.errors}  warnings logged {figures.warnings}"
            )
        return dict(counted)

    async def rate(self, target: Target, body: bytes = BODY) -> RequestFigures:
        options = self.options
        return await self.requests(
            target, body, connections=options.connections, seconds=options.rate_seconds
        )

    async def compare(self, on: tuple[Target, bytes], off: tuple[Target, bytes]) -> Results:
        """Phase 2 load on each side, alternating (on, off, off, on, …) so that drift over
        the run (a growing history table, a neighbour's job) falls on both sides alike."""
        runs: dict[str, list[RequestFigures]] = {"on": [], "off": []}
        sides = [("on", on), ("off", off)]
        for round_ in range(self.options.comparison_rounds):
            for side, (target, body) in sides if round_ % 2 == 0 else sides[::-1]:
                runs[side].append(
                    await self.requests(
                        target,
                        body,
                        connections=self.options.connections,
                        seconds=self.options.comparison_seconds,
                    )
                )
        return {
            "on_rps": statistics.fmean(run.rps for run in runs["on"]),
            "off_rps": statistics.fmean(run.rps for run in runs["off"]),
            "runs": runs,
        }

    async def switch(self, phase: str, variable: str) -> Results:
        """Two fresh relays started together, side by side: one as configured by default
        (the feature on), one with `variable=off`."""
        if not relay_setting_exists(variable):
            self.say(f"{phase}: skipped, relay has no {variable} setting yet")
            return {"skipped": f"relay.config has no {variable} setting"}
        self.say(f"{phase} on vs off ({variable}=off)")
        relay = self.stack.start_variant({})
        variant = self.stack.start_variant({variable: "off"})
        try:
            result = await self.compare((relay, BODY), (variant, BODY))
            if phase == "receipts":
                # Not targets: relay with nothing committed (no history row, no receipt), to
                # tell what the request path costs from what the database writer costs.
                self.say('nothing recorded (receipts off, "store": false)')
                result["latency_unrecorded"] = await self.requests(
                    variant, NO_STORE_BODY, connections=1, seconds=self.options.latency_seconds
                )
                result["rate_unrecorded"] = await self.rate(variant, NO_STORE_BODY)
        finally:
            self.stack.stop_variant(variant)
            self.stack.stop_variant(relay)
        return result


def to_json(results: Results) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, RequestFigures | StreamFigures | Counted):
            return asdict(value)
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    return convert(results)
