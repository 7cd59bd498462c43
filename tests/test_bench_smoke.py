"""`make bench` keeps working: the harness runs end to end in a tiny configuration.

Only that it completes and reports every figure is checked; speed is never
asserted in tests (DESIGN.md), the benchmark itself prints it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson


def test_bench_runs_every_phase_kind_and_writes_its_figures(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "bench", "--quick",
        "--phases", "latency,streams,limits",
        "--latency-seconds", "1", "--rate-seconds", "1",
        "--streams", "4", "--tokens", "8", "--token-delay-ms", "5", "--stream-seconds", "0.5",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]

    assert "| 1 at a time: p50 ms" in done.stdout
    [written] = tmp_path.glob("*.json")
    results = orjson.loads(written.read_bytes())["results"]
    for target in ("direct", "baseline", "relay"):
        assert results["latency"][target]["requests"] > 0
        assert results["latency"][target]["errors"] == 0
        assert results["streams"][target]["streams"] > 0
        assert results["streams"][target]["errors"] == 0
    assert results["memory"]["relay_peak_rss_mb"] > 0
    limits = results["limits"]
    assert "skipped" in limits or (limits["on_rps"] > 0 and limits["off_rps"] > 0)
