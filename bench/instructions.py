"""Phase `instructions`: what one request costs the server's core, counted by callgrind.

Request rates on a shared virtual machine stray by a fifth between runs of the same
code, so an on/off comparison needs many rounds and still only brackets the truth.
callgrind counts the instructions a process executes: the same for the same build
and requests, whatever else the machine does (its neighbours, its clock). relay
(and the baseline proxy) run under it, counting only while a fixed number of
requests pass, after a warm-up. Where a server is bound by its core,
as at 64 connections, its request rate goes as one over these counts: history or
receipts costing a tenth of the instructions cost about a tenth of the rate.

Group commits and rate-limit batches hold whatever queued meanwhile, so the counts
depend on concurrency: one request at a time, relay spends a third more per request
than here. At 32 concurrent requests (under callgrind a server runs some fifty
times slower, so they queue as 64 connections do at full speed) the batches are
full and repeated runs agree within about 1%. Streamed answers vary more (up to a
fifth, baseline and relay alike): how many events one read brings depends on timing,
and each read costs the work of waking up for it. So the socket reads are counted
too, from the same dump: the calls to libuv's `uv__read`, which uvloop makes once per
read (one read(2), one call of the stream's read callback).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import aiohttp

from bench.stack import Stack, Target

CONCURRENCY = 32  # requests in flight at once; counts are per request
# Trailing work of the last requests (token debits, log lines) happens after their answers.
SETTLE_SECONDS = 1.5
ROUGH_SETTLE_SECONDS = 0.3
# relay's own timeouts assume a process at full speed.
_SLOW_PROCESS = {"RELAY_REDIS_TIMEOUT": "10", "RELAY_DATABASE_TIMEOUT": "60"}
READ_FUNCTION = "uv__read"


def callgrind_available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def callgrind_wrapper(out_file: Path) -> list[str]:
    # Counting starts switched off: start-up and warm-up are not measured.
    return [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
    ]  # fmt: skip


@dataclass
class Counted:
    """Instructions per request over one counted run."""

    instructions_per_request: float
    requests: int
    errors: int
    warnings: int = 0  # lines logged at warning or above since start-up (timeouts, fallbacks)
    reads_per_request: float = 0.0  # socket reads, from clients and upstream alike
    instructions_per_read: float = 0.0


async def _send(target: Target, body: bytes, count: int) -> int:
    """`count` requests, CONCURRENCY at a time; returns how many failed."""
    url = f"http://{target.host}:{target.port}{target.path}"
    headers = {"Content-Type": "application/json", **target.headers}
    failed = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker(share: int) -> None:
            nonlocal failed
            for _ in range(share):
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        await answer.read()
                        failed += answer.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1

        await asyncio.gather(*(worker(count // CONCURRENCY) for _ in range(CONCURRENCY)))
    return failed


async def _callgrind_control(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await process.wait()


class Dump(NamedTuple):
    instructions: int  # the event total
    reads: int  # calls to READ_FUNCTION


def dump_figures(text: str) -> Dump | None:
    """The totals of one callgrind dump and its calls to READ_FUNCTION (None without totals).

    Function names are compressed: `(id) name` the first time, `(id)` after, shared by
    `fn=` and `cfn=` lines; a `calls=` line counts calls to the last `cfn=` named."""
    names: dict[str, str] = {}
    called = ""
    total: int | None = None
    reads = 0
    for line in text.splitlines():
        if line.startswith(("fn=", "cfn=")):
            key, _, name = line.partition("=")
            if name.startswith("("):
                ref, _, given = name.partition(")")
                name = names.setdefault(ref, given.strip() or ref)
            if key == "cfn":
                called = name.split("'")[0]  # f'2: a recursion level of f
        elif line.startswith("calls=") and called == READ_FUNCTION:
            reads += int(line.removeprefix("calls=").split()[0])
        elif line.startswith("totals:"):
            total = int(line.split()[1])
    return None if total is None else Dump(total, reads)


def dumped(out_file: Path, before: set[Path]) -> Dump:
    """The figures of the dump callgrind wrote since `before` was listed."""
    new = [path for path in out_file.parent.glob(out_file.name + "*") if path not in before]
    for path in sorted(new, key=lambda path: path.stat().st_mtime, reverse=True):
        if figures := dump_figures(path.read_text(errors="replace")):
            return figures
    raise RuntimeError(f"callgrind wrote no totals next to {out_file}")


async def count_instructions(
    target: Target, body: bytes, out_file: Path, requests: int, *, rough: bool = False
) -> Counted:
    """Warm up, then count the instructions `target`'s server spends on `requests` requests.

    `rough` (a quick smoke run) skips the warm-up and settles for less: the harness
    is exercised end to end in a fraction of the time, its figures a little high."""
    requests = max(CONCURRENCY, requests - requests % CONCURRENCY)
    pid = str(target.server_pid)
    settle = ROUGH_SETTLE_SECONDS if rough else SETTLE_SECONDS
    if not rough:
        await _send(target, body, max(CONCURRENCY, requests // 5))
        await asyncio.sleep(settle)
    await _callgrind_control("--zero", pid)
    await _callgrind_control("--instr=on", pid)
    errors = await _send(target, body, requests)
    await asyncio.sleep(settle)
    await _callgrind_control("--instr=off", pid)
    before = set(out_file.parent.glob(out_file.name + "*"))
    await _callgrind_control("--dump", pid)
    for _ in range(100):  # the dump is written asynchronously
        try:
            dump = dumped(out_file, before)
            break
        except RuntimeError:
            await asyncio.sleep(0.1)
    else:
        dump = dumped(out_file, before)
    return Counted(
        dump.instructions / requests, requests, errors,
        reads_per_request=dump.reads / requests,
        instructions_per_read=dump.instructions / dump.reads if dump.reads else 0.0,
    )  # fmt: skip


def warnings_in(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(
        '"level":"warning"' in line or '"level":"error"' in line for line in text.splitlines()
    )


class Bodies(NamedTuple):
    stored: bytes  # a non-streamed request, as the rate phases send it
    not_stored: bytes  # the same with "store": false
    streamed: bytes  # a streamed request, as the streaming phases send it


async def measure_instructions(
    stack: Stack, bodies: Bodies, workdir: Path, requests: int, *, rough: bool = False
) -> dict[str, Counted]:
    """The baseline and relay, in each configuration the on/off comparisons use, on the
    non-streamed request; the baseline and relay as configured on the streamed one
    (fewer of them: each is a request plus one event per token). A `rough` run (the
    smoke run's) counts the baseline and relay as configured only: every server
    started under valgrind costs it seconds."""
    streams = max(CONCURRENCY, requests // 4 // CONCURRENCY * CONCURRENCY)  # whole rounds of 32
    plan: tuple[tuple[str, dict[str, str] | None, tuple[tuple[str, bytes, int], ...]], ...] = (
        ("baseline", None, (
            ("", bodies.stored, requests), (", streamed", bodies.streamed, streams),
        )),
        ("relay", {}, (
            ("", bodies.stored, requests),
            (", store false", bodies.not_stored, requests),
            (", streamed", bodies.streamed, streams),
        )),
        ("relay, receipts off", {"RELAY_RECEIPTS": "off"}, (
            ("", bodies.stored, requests),
            (", store false", bodies.not_stored, requests),
        )),
        ("relay, rate limits off", {"RELAY_RATE_LIMITS": "off"}, (
            ("", bodies.stored, requests),
        )),
    )  # fmt: skip
    if rough:
        plan = plan[:2]
    results: dict[str, Counted] = {}
    for name, overrides, runs in plan:
        out = workdir / ("callgrind." + name.replace(", ", "-").replace(" ", "-"))
        if overrides is None:
            server = stack.start_baseline_variant(callgrind_wrapper(out))
        else:
            server = stack.start_variant({**_SLOW_PROCESS, **overrides}, callgrind_wrapper(out))
        try:
            for suffix, body, count in runs:
                counted = await count_instructions(server, body, out, count, rough=rough)
                counted.warnings = warnings_in(stack.variant_log(server))
                results[name + suffix] = counted
        finally:
            stack.stop_variant(server)
    return results
