"""Private PostgreSQL and Redis servers from the local binaries, for tests, dev and the bench."""

from __future__ import annotations

import abc
import ctypes
import functools
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import psycopg2

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_READY_TIMEOUT = 30.0
_POLL_INTERVAL = 0.02


class DevServerError(RuntimeError):
    """A private server could not be found, initialised or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
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
            proc.wait(_READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored signal %d, killing it", proc.pid, sig)
            proc.kill()
            proc.wait()
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


class _ServerProcess(abc.ABC):
    """One child server on a fixed port, reaped by stop(), by garbage collection or at exit."""

    _stop_signal: int = signal.SIGTERM
    log_path: Path

    def __init__(self, port: int | None) -> None:
        self.port = port if port is not None else free_port()
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., _ServerProcess] | None = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it answers."""

    def stop(self) -> None:
        if self._finalizer is None:
            return
        self._finalizer()
        self._finalizer = self._proc = None
        self._wait_for(lambda: not _port_open(self.port), f"port {self.port} to close")

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
        if _port_open(self.port):
            raise DevServerError(f"{_HOST}:{self.port} is already in use")

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
        deadline = time.monotonic() + _READY_TIMEOUT
        while not done():
            if self._proc is not None and self._proc.poll() is not None:
                failure = f"{what} exited with status {self._proc.returncode}"
            elif time.monotonic() > deadline:
                failure = f"timed out after {_READY_TIMEOUT:.0f}s waiting for {what}"
            else:
                time.sleep(_POLL_INTERVAL)
                continue
            raise DevServerError(f"{failure}\n{_log_tail(self.log_path, self._log_offset)}")


@functools.cache
def _postgres_bindir() -> Path:
    """initdb's directory: from PATH first, else the newest /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda bindir: [int(part) for part in bindir.parent.name.split(".") if part.isdigit()],
        reverse=True,
    )
    for bindir in candidates + versions:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise DevServerError("PostgreSQL server binaries (initdb, postgres) not found")


def _postgres_user() -> dict[str, Any]:
    """Popen arguments that run a command as `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise DevServerError("running as root needs a `postgres` user for initdb") from None
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}


def _grant_search(path: Path, uid: int, groups: list[int]) -> None:
    """Let `uid` traverse every ancestor of path; pytest's tmp root, for one, is 0700 root."""
    for parent in reversed(path.absolute().parents):
        st = parent.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            log.warning("granting search permission on %s so postgres can reach its data", parent)
            os.chmod(parent, stat.S_IMODE(st.st_mode) | bit)


class PostgresServer(_ServerProcess):
    """A PostgreSQL cluster in data_dir, initialised on first start, trusting local connections."""

    _stop_signal = signal.SIGINT  # fast shutdown: disconnect clients, checkpoint, exit

    def __init__(self, data_dir: Path, port: int | None = None, *, fast: bool = False) -> None:
        super().__init__(port)
        self.data_dir = Path(data_dir).absolute()
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.fast = fast

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._check_port()
        as_postgres = _postgres_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if as_postgres:
            _grant_search(self.data_dir, as_postgres["user"], as_postgres["extra_groups"])
            os.chown(self.data_dir, as_postgres["user"], as_postgres["group"])
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(as_postgres)
        # A short private socket dir: the data dir's path may exceed the 107-byte socket limit.
        socket_dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        if as_postgres:
            os.chown(socket_dir, as_postgres["user"], as_postgres["group"])
        bindir = _postgres_bindir()
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += [
            "-k",
            str(socket_dir),
            "-c",
            f"listen_addresses={_HOST}",
            "-c",
            "max_connections=200",
        ]
        if self.fast:
            # Throwaway clusters: durability costs time and buys nothing.
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                argv += ["-c", setting]
        started = time.monotonic()
        self._launch(argv, self._accepts_connections, (socket_dir,), **as_postgres)
        log.info("postgres ready on port %d in %.2fs", self.port, time.monotonic() - started)

    def _initdb(self, as_postgres: dict[str, Any]) -> None:
        argv = [str(_postgres_bindir() / "initdb"), "-D", str(self.data_dir), "--no-sync"]
        argv += ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", **as_postgres)
        if done.returncode != 0:
            raise DevServerError(f"initdb failed for {self.data_dir}:\n{done.stdout}{done.stderr}")
        log.info("initdb %s in %.2fs", self.data_dir, time.monotonic() - started)

    def _accepts_connections(self) -> bool:
        if not _port_open(self.port):
            return False
        try:
            psycopg2.connect(self.url, connect_timeout=2).close()
        except psycopg2.OperationalError:  # "the database system is starting up"
            return False
        return True


class RedisServer(_ServerProcess):
    """A Redis without persistence; data_dir only holds its log (a private temp dir if None)."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        super().__init__(port)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="relay-redis-")
            data_dir = Path(self._scratch.name)
        self.data_dir = Path(data_dir).absolute()
        self.log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise DevServerError("redis-server not found on PATH")
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", _HOST, "--port", str(self.port), "--dir", str(self.data_dir)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
        started = time.monotonic()
        self._launch(argv, self._answers_ping)
        log.info("redis ready on port %d in %.2fs", self.port, time.monotonic() - started)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((_HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
