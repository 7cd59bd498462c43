"""The systemd notify protocol: READY, STOPPING, STATUS and watchdog pings over NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams; does nothing when relay was not started by systemd."""

    def __init__(self, address: str = "", watchdog_seconds: float | None = None) -> None:
        # A leading '@' names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = watchdog_seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd watches; a child that inherited it must not ping.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET", ""), watchdog)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; False when not sent."""
        if not self.address:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the loop on a full receive queue; a lost ping is retried.
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": type(exc).__name__})
            return False
        return True

    async def extend_start(self, seconds: float = 10.0) -> None:
        """While start-up runs (migrations may outlast the unit's TimeoutStartSec;
        relay bounds each step itself), ask systemd for twice `seconds` more every
        `seconds`, until cancelled. A start whose event loop is stuck stops asking,
        and the unit's timeout ends it as before."""
        if not self.enabled:
            return
        while True:
            self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 2 * 1_000_000)}")
            await asyncio.sleep(seconds)

    async def watchdog(self) -> None:
        """Ping `WATCHDOG=1` at half the interval systemd asked for, until cancelled."""
        if not self.enabled or not self.watchdog_seconds:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_seconds / 2)
