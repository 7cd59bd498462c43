"""A private PostgreSQL cluster from the machine's server binaries (initdb runs as postgres)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2

from relay.devservers.process import (
    HOST,
    DevServerError,
    ServerProcess,
    port_open,
)
from relay.durable_files import sync_directory

log = logging.getLogger(__name__)

# Written by every postmaster as it starts, and left in place; initdb's own backends
# (bootstrap, single-user) never write it. initdb writes no file of its own as it ends,
# and PG_VERSION, the configuration files and pg_control all come before its longest
# step: a data dir without this one was never run on, so holds nothing anyone put there.
_RUN_ON = "postmaster.opts"


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


class PostgresServer(ServerProcess):
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
        return f"postgresql://postgres@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._check_port()
        as_postgres = _postgres_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if as_postgres:
            _grant_search(self.data_dir, as_postgres["user"], as_postgres["extra_groups"])
        if not (self.data_dir / _RUN_ON).exists():
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
            f"listen_addresses={HOST}",
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
        """Build the cluster beside data_dir and rename it into place once complete.

        An initdb cut short (a signal, SIGKILL, power loss) thus leaves no data_dir that a
        later start would take for a cluster, only the sibling, which the next start rebuilds.
        A data_dir PostgreSQL never ran on is replaced: an older relay's initdb ran in
        place, and cut short left one half built (a complete one, never started, holds
        nothing yet either).
        """
        building = self.data_dir.with_name(self.data_dir.name + ".initdb")
        shutil.rmtree(building, ignore_errors=True)  # a build cut short before
        if self.data_dir.exists():
            log.warning("rebuilding %s: PostgreSQL never ran on it", self.data_dir)
            shutil.rmtree(self.data_dir)
        building.mkdir(mode=0o700)
        if as_postgres:
            os.chown(building, as_postgres["user"], as_postgres["group"])
        argv = [str(_postgres_bindir() / "initdb"), "-D", str(building)]
        argv += ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]
        if self.fast:
            argv.append("--no-sync")  # else what is renamed into place is on disk
        started = time.monotonic()
        # Its own session: it and the backends it runs are killed together if we stop.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
            start_new_session=True,
            **as_postgres,
        )
        try:
            output, _ = proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shutil.rmtree(building, ignore_errors=True)
            raise
        if proc.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise DevServerError(f"initdb failed for {self.data_dir}:\n{output}")
        os.rename(building, self.data_dir)
        if not self.fast:
            sync_directory(self.data_dir.parent)  # the rename itself
        log.info("initdb %s in %.2fs", self.data_dir, time.monotonic() - started)

    def _accepts_connections(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            psycopg2.connect(self.url, connect_timeout=2).close()
        except psycopg2.OperationalError:  # "the database system is starting up"
            return False
        return True
