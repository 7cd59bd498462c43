"""`make bench` keeps working: the harness runs end to end in a tiny configuration.

Only that it completes and reports every figure is checked; speed is never
asserted in tests (DESIGN.md), the benchmark itself prints it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from bench.figures import RequestFigures, Usage
from bench.instructions import Counted, dump_figures, dumped
from bench.report import table_rows


def test_bench_runs_every_phase_kind_and_writes_its_figures(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "bench", "--quick",
        "--phases", "latency,streams,limits,instructions", "--instruction-requests", "32",
        "--latency-seconds", "1", "--rate-seconds", "1",
        "--streams", "4", "--tokens", "8", "--token-delay-ms", "5", "--stream-seconds", "0.5",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
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
    # make test installs valgrind, as make bench does: instructions are counted (a
    # --quick run counts the baseline and relay as configured, not the switched ones).
    counted = results["instructions"]
    assert set(counted) == {
        "baseline", "baseline, streamed", "relay", "relay, store false", "relay, streamed",
    }  # fmt: skip
    for figures in counted.values():
        assert figures["instructions_per_request"] > 100_000
        assert (figures["errors"], figures["warnings"]) == (0, 0)
        # A request is read at least once; a streamed answer's events take more reads.
        assert figures["reads_per_request"] >= 1
        assert figures["instructions_per_read"] > 0
    assert counted["relay, streamed"]["reads_per_request"] > counted["relay"]["reads_per_request"]
    assert "| instructions per request (callgrind)" in done.stdout
    assert "|     reads per answer / instructions per read" in done.stdout


def test_a_callgrind_dump_is_read_for_its_totals(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.relay"
    out.write_text("events: Ir\nsummary: 0\ntotals: 0\n")  # the empty dump at exit
    before = {out}
    (tmp_path / "callgrind.relay.1").write_text("desc: Trigger: dump\nsummary: 0\ntotals: 1234\n")
    assert dumped(out, before) == (1234, 0)


def test_a_callgrind_dump_counts_the_socket_reads() -> None:
    # Names are given once, then referred to by id alone, in fn= and cfn= lines alike.
    dump = """events: Ir
fn=(1) uv__io_poll
cfn=(2) uv__stream_io
calls=5 0
0 900
fn=(2)
cfn=(3) uv__read
calls=5 0
0 800
cfn=(4) uv__write
calls=7 0
0 70
fn=(5) uv__run_timers
cfn=(3)
calls=2 0
0 300
totals: 5000
"""
    assert dump_figures(dump) == (5000, 7)
    assert dump_figures("events: Ir\n") is None


def test_instruction_rows_turn_counts_into_rate_ratios() -> None:
    def counted(millions: float) -> Counted:
        return Counted(millions * 1e6, 32, 0)

    rows = {
        row.measure.strip(): row
        for row in table_rows(
            {
                "instructions": {
                    "baseline": counted(0.5),
                    "relay": counted(2.0),
                    "relay, store false": counted(1.8),
                    "relay, receipts off": counted(1.6),
                    "relay, receipts off, store false": counted(1.0),
                    "relay, rate limits off": counted(1.9),
                    "baseline, streamed": counted(3.0),
                    "relay, streamed": counted(6.0),
                }
            },
            64,
        )
    }
    assert rows["instructions per request (callgrind)"].of_baseline == "rate ≈ 25% of baseline"
    assert rows["history on vs off"].of_baseline == "on ≈ 90% of off"
    assert rows["receipts on vs off"].of_baseline == "on ≈ 80% of off"
    assert rows["rate limits on vs off"].of_baseline == "on ≈ 95% of off"
    assert (
        "neither: rate ≈ 50% of baseline"
        == rows["history off / receipts off / neither"].of_baseline
    )


def test_a_rough_instruction_count_reports_what_it_counted() -> None:
    def counted(millions: float) -> Counted:
        return Counted(millions * 1e6, 32, 0)

    rough = {
        "baseline": counted(0.5),
        "relay": counted(2.0),
        "relay, store false": counted(1.8),
        "baseline, streamed": Counted(3e6, 32, 0, reads_per_request=60, instructions_per_read=5e4),
        "relay, streamed": counted(6.0),
    }
    rows = {row.measure.strip(): row for row in table_rows({"instructions": rough}, 64)}
    assert rows["history on vs off"].of_baseline == "on ≈ 90% of off"
    assert rows["a streamed answer"].of_baseline == "tokens/s ≈ 50% of baseline"
    reads = rows["reads per answer / instructions per read"]
    assert (reads.baseline, reads.relay) == ("60.0 / 50 K", "—")
    assert "receipts on vs off" not in rows and "rate limits on vs off" not in rows


def test_on_off_rows_also_give_requests_per_cpu_second() -> None:
    def run(rps: float, cpu: float) -> RequestFigures:
        figures = RequestFigures(int(rps * 4), 4.0, rps, 1.0, 2.0, 1.0, 3.0, 0)
        figures.usage = Usage(server_cpu=cpu)
        return figures

    # Off is faster by the clock and by the CPU each request took; on waited more.
    result = {
        "on_rps": 900.0,
        "off_rps": 1000.0,
        "runs": {"on": [run(900, 0.75)], "off": [run(1000, 0.8)]},
    }
    rows = {row.measure.strip(): row for row in table_rows({"history": result}, 64)}
    assert rows["history on vs off: req/s (mean of 1)"].of_baseline == "on = 90% of off"
    assert rows["per CPU-second of relay"].relay == "1200 on / 1250 off"
    assert rows["per CPU-second of relay"].of_baseline == "on ≈ 96% of off"


def test_no_target_is_met_by_a_run_that_failed_requests() -> None:
    # A relay answering fast refusals (429s, 503s) must not pass for a fast relay.
    def run(rps: float, errors: int = 0, p50: float = 1.0) -> RequestFigures:
        figures = RequestFigures(int(rps * 4), 4.0, rps, p50, 2.0, 1.0, 3.0, errors)
        figures.usage = Usage(server_cpu=0.5)
        return figures

    results = {
        "latency": {"direct": run(5000, p50=0.1), "baseline": run(2000), "relay": run(900, 3)},
        "rate": {"direct": run(9000), "baseline": run(5000), "relay": run(4000, 32000)},
        "history": {
            "on_rps": 990.0,
            "off_rps": 1000.0,
            "runs": {"on": [run(990, 12)], "off": [run(1000)]},
        },
    }
    rows = {row.measure.strip(): row for row in table_rows(results, 64)}
    assert rows["64 connections: req/s"].of_baseline == "80%"
    assert rows["64 connections: req/s"].met is False
    assert rows["1 at a time: p50 ms"].met is False
    assert rows["history on vs off: req/s (mean of 1)"].met is False
    assert rows["errors"].relay == "12 on / 0 off"
