"""`python -m bench [--quick] [--phases …]`: start the stack, run the phases, print the table,
write the figures to bench/results/<timestamp>.json."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench.cores import can_pin, pin_self_to_load_core
from bench.options import BenchOptions, parse_options
from bench.phases import PhaseRunner, Results, to_json
from bench.report import disturbed_runs, render, table_rows, verdicts
from bench.stack import Stack


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "pinned": can_pin(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


def revision() -> str:
    """The commit measured, marked dirty when the tree held uncommitted work."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def write_results(options: BenchOptions, document: dict[str, Any]) -> Path:
    options.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = options.results_dir / f"{stamp}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # As an exception, so the Stack's cleanup stops every server it started.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Before any child starts: PostgreSQL, Redis and the simulator inherit the load core.
    pin_self_to_load_core()
    if not can_pin():
        say("warning: fewer than 2 cores available; nothing is pinned and figures mix together")
    if options.client == "python":
        say("warning: wrk not found; the Python load generator is slower and may be the bottleneck")
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    started = time.monotonic()
    try:
        say(f"starting PostgreSQL, Redis, simulator, baseline proxy and relay in {workdir}")
        with Stack(workdir, options) as stack:
            results: Results = uvloop.run(PhaseRunner(stack, options, workdir, say).run())
    finally:
        if options.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = table_rows(results, options.connections)
    table = render(rows)
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "revision": revision(),
        "machine": machine(),
        "options": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(options).items()
        },
        "seconds": round(time.monotonic() - started, 1),
        "results": to_json(results),
        "targets": verdicts(rows),
        "disturbed_runs": disturbed_runs(results),
        "table": table,
    }
    path = write_results(options, document)
    print(table)
    if document["disturbed_runs"]:
        say(
            "warning: other processes used relay's core during "
            + ", ".join(document["disturbed_runs"])
        )
        say("these figures are not relay's alone; rerun on a quiet machine")
    say(f"figures written to {path} ({document['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
