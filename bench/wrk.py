"""Non-streamed load from wrk (C, one thread): cheap enough not to be what is measured."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import orjson

from bench.figures import RequestFigures
from bench.stack import Target

_MARK = "BENCH_WRK "
# wrk's Lua `done` hook prints the figures as one JSON line after wrk's own report.
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    MARK, summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


class WrkError(RuntimeError):
    pass


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_script(path: Path, target: Target, body: bytes) -> Path:
    lines = [
        f"MARK = {_lua_string(_MARK)}",
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(body.decode())}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in target.headers.items()
    ]
    path.write_text("\n".join(lines) + _DONE)
    return path


async def run_wrk(
    target: Target, body: bytes, *, connections: int, seconds: float, workdir: Path
) -> RequestFigures:
    """wrk -t1 for whole seconds (wrk's unit), at most `seconds` rounded up."""
    script = write_script(workdir / f"wrk-{target.name}.lua", target, body)
    whole = max(1, math.ceil(seconds))
    url = f"http://{target.host}:{target.port}{target.path}"
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "10s", "-s", str(script)]
    process = await asyncio.create_subprocess_exec(
        *argv, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), whole + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise WrkError(f"wrk against {target.name} did not finish") from None
    text = output.decode(errors="replace")
    line = next((line for line in text.splitlines() if line.startswith(_MARK)), None)
    if process.returncode != 0 or line is None:
        raise WrkError(f"wrk against {target.name} failed:\n{text}")
    data = orjson.loads(line[len(_MARK) :])
    kinds = {
        kind: data[kind] for kind in ("connect", "read", "write", "status", "timeout") if data[kind]
    }
    elapsed = data["duration_us"] / 1e6
    # wrk counts every response it completed, refusals too (which it also counts as
    # status errors): only answers count here, as in the Python load generator. Its
    # latency percentiles cannot be split so; a run with errors is never a target met.
    answered = data["requests"] - data["status"]
    return RequestFigures(
        requests=answered,
        seconds=round(elapsed, 3),
        rps=answered / elapsed if elapsed else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=sum(kinds.values()),
        error_kinds=kinds,
    )
