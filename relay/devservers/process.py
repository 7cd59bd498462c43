"""A local server as a child process: on a free port, waited for, reaped however relay ends."""

from __future__ import annotations

import abc
import ctypes
import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


class DevServerError(RuntimeError):
    """A private server could not be found, initialised or started."""


# Ports handed out by this process: each goes to one server, even before it listens.
_handed_out: set[int] = set()
_handing_out = threading.Lock()
# Unprivileged ports to pick from, less the kernel's ephemeral range (below).
_PORTS = range(10_000, 65_536)


def _ephemeral_ports() -> range:
    """The ports the kernel picks from for outgoing connections and for bind(port 0)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32_768, 60_999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on, for a server started soon after.

    Not one the kernel would choose itself: a port from its ephemeral range, free
    when asked, can be taken meanwhile by any outgoing connection (to the
    database the server is about to use, say) and the server then cannot listen.
    Random, so that processes asking at once rarely meet on one.
    """
    ephemeral = _ephemeral_ports()
    candidates = [port for port in _PORTS if port not in ephemeral]
    with _handing_out:
        for port in random.sample(candidates, min(len(candidates), 200)):
            if port not in _handed_out and _can_bind(port):
                _handed_out.add(port)
                return port
        # No range of our own (the ephemeral one spans nearly everything): the kernel's.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            chosen: int = sock.getsockname()[1]
            return chosen


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path, since: int, lines: int = 20) -> str:
    """The last lines this start wrote, not an older run's."""
    try:
        with path.open("rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _die_with_parent(sig: int) -> Callable[[], object] | None:
    """A preexec_fn asking the kernel to send sig to the child when its parent thread dies.

    It covers a SIGKILLed test run, where atexit never runs. Resolved before the fork, so the
    child only makes the call; Popen runs it after the uid switch, which would clear it.
    """
    if sys.platform != "linux":
        return None
    return functools.partial(ctypes.CDLL(None).prctl, 1, sig)  # 1 = PR_SET_PDEATHSIG


def _shutdown(proc: subprocess.Popen[bytes], sig: int, leftovers: tuple[Path, ...]) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored signal %d, killing it", proc.pid, sig)
            proc.kill()
            proc.wait()
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


class ServerProcess(abc.ABC):
    """One child server on a fixed port, reaped by stop(), by garbage collection or at exit."""

    _stop_signal: int = signal.SIGTERM
    log_path: Path

    def __init__(self, port: int | None) -> None:
        self.port = port if port is not None else free_port()
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., ServerProcess] | None = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it answers."""

    def stop(self) -> None:
        if self._finalizer is None:
            return
        self._finalizer()
        self._finalizer = self._proc = None
        self._wait_for(lambda: not port_open(self.port), f"port {self.port} to close")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_port(self) -> None:
        if port_open(self.port):
            raise DevServerError(f"{HOST}:{self.port} is already in use")

    def _launch(
        self,
        argv: list[str],
        ready: Callable[[], bool],
        leftovers: tuple[Path, ...] = (),
        **popen: Any,
    ) -> None:
        # The death signal follows the thread that forked, so only the main thread may rely on it.
        on_main = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as out:
            self._log_offset = out.tell()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                # Own session: a Ctrl-C meant for `make dev` must not kill servers before cleanup.
                start_new_session=True,
                preexec_fn=_die_with_parent(self._stop_signal) if on_main else None,
                **popen,
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _shutdown, proc, self._stop_signal, leftovers)
        name = Path(argv[0]).name
        try:
            self._wait_for(ready, f"{name} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not done():
            if self._proc is not None and self._proc.poll() is not None:
                failure = f"{what} exited with status {self._proc.returncode}"
            elif time.monotonic() > deadline:
                failure = f"timed out after {READY_TIMEOUT:.0f}s waiting for {what}"
            else:
                time.sleep(POLL_INTERVAL)
                continue
            raise DevServerError(f"{failure}\n{_log_tail(self.log_path, self._log_offset)}")
