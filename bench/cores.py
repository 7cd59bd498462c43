"""CPU pinning and what /proc says about cores and processes during a run."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# relay (and the baseline proxy standing in for it) get core 0 to themselves;
# everything that plays the outside world (load generator, simulator, PostgreSQL,
# Redis) shares core 1, so relay's figures are those of one core.
SERVER_CORE = 0
LOAD_CORE = 1
_TICKS = os.sysconf("SC_CLK_TCK")


@functools.cache
def can_pin() -> bool:
    """Whether both cores are ours; asked once, before this process pins itself to one."""
    return {SERVER_CORE, LOAD_CORE} <= os.sched_getaffinity(0)


def pin_self_to_load_core() -> None:
    """Pin this process; children started later inherit the mask unless told otherwise."""
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})


def server_core_prefix() -> list[str]:
    """argv prefix that runs a command on the server core, from its first instruction."""
    if not can_pin():
        return []
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(SERVER_CORE)] if taskset else []


def pin_to_server_core(pid: int) -> None:
    """Fallback when taskset is missing: pin right after the spawn."""
    if can_pin():
        os.sched_setaffinity(pid, {SERVER_CORE})


def process_cpu_seconds(pid: int) -> float:
    """User plus system time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def peak_rss_mb(pid: int) -> float:
    """The RSS high-water mark (VmHWM) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class CoreTimes:
    """Busy and total jiffies of each core, from /proc/stat."""

    busy: dict[int, int]
    total: dict[int, int]

    @classmethod
    def now(cls) -> CoreTimes:
        busy: dict[int, int] = {}
        total: dict[int, int] = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            ticks = [int(value) for value in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            core = int(name[3:])
            total[core] = sum(ticks)
            busy[core] = total[core] - idle
        return cls(busy, total)

    def busy_since(self, start: CoreTimes, core: int) -> float:
        """Fraction of the time between start and self that `core` was busy."""
        elapsed = self.total.get(core, 0) - start.total.get(core, 0)
        if elapsed <= 0:
            return 0.0
        return (self.busy[core] - start.busy[core]) / elapsed


def listen_overflows() -> int:
    """Connections the kernel dropped machine-wide because an accept queue was full.

    A server whose listen backlog overflows makes clients wait for SYN-ACK
    retransmissions (1 s, then 3 s, …), which shows up as first-token time.
    """
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0
