"""Server processes the benchmark starts: spawned pinned, logged to a file, stopped by pid."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.cores import pin_to_server_core, server_core_prefix

_READY_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], object] | None:
    """A preexec_fn: the kernel sends SIGTERM to the child when the bench dies, even by
    SIGKILL, so no relay or simulator outlives a killed run (it survives taskset's exec).
    Resolved before the fork, so the child only makes the call."""
    if sys.platform != "linux":
        return None
    return functools.partial(ctypes.CDLL(None).prctl, _PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


class Child:
    """One server process (`python -m …`) and the log it writes."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, server_core: bool) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.server_core = server_core
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def python(
        cls,
        name: str,
        module_args: list[str],
        log_path: Path,
        *,
        server_core: bool,
        wrapper: Sequence[str] = (),
    ) -> Child:
        """`python -m module_args`, run by `wrapper` (valgrind, say) when one is given."""
        argv = [*wrapper, sys.executable, "-m", *module_args]
        return cls(name, argv, log_path, server_core=server_core)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self, env: dict[str, str] | None = None) -> None:
        argv = (server_core_prefix() + self.argv) if self.server_core else self.argv
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
        if self.server_core and argv is self.argv:
            pin_to_server_core(self.process.pid)

    def wait_ready(
        self, url: str, headers: dict[str, str] | None = None, seconds: float = _READY_SECONDS
    ) -> None:
        """Poll `url` until it answers 200; fail early if the process died."""
        deadline = time.monotonic() + seconds
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ChildError(
                    f"{self.name} exited with {self.process.returncode}\n{self.tail()}"
                )
            try:
                request = urllib.request.Request(url, headers=headers or {})
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name} not ready at {url}\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_environment(**extra: str) -> dict[str, str]:
    """This environment without any RELAY_* variable of the caller's, plus `extra`."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    return {**base, **extra}
