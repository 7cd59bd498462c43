"""A private Redis without persistence, from the machine's redis-server."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path

from relay.devservers.process import (
    HOST,
    DevServerError,
    ServerProcess,
)

log = logging.getLogger(__name__)


class RedisServer(ServerProcess):
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
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise DevServerError("redis-server not found on PATH")
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.data_dir)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
        started = time.monotonic()
        self._launch(argv, self._answers_ping)
        log.info("redis ready on port %d in %.2fs", self.port, time.monotonic() - started)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
