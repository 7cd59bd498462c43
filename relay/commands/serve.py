"""`relay serve`: run the gateway on uvloop; on SIGINT or SIGTERM drain, clean up, exit 0;
SIGHUP is logged and ignored."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import stat
from collections.abc import Coroutine
from typing import Any

import uvloop
from aiohttp import web

from relay.api.server import RelayAppRunner
from relay.app import create_app
from relay.appkeys import IN_FLIGHT
from relay.config import ConfigError, Settings
from relay.drain import InFlight
from relay.memory import return_large_blocks
from relay.systemd import Notifier

log = logging.getLogger(__name__)

# After the drain deadline, streams get this long (at most the drain timeout)
# to send a final event and end; whatever still runs after it is cancelled.
GRACE_SECONDS = 5.0
# By the time the runner shuts down, drain() has already waited.
SHUTDOWN_SECONDS = 1.0
# aiohttp's default of 128 overflows when a thousand clients connect at once
# (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096
KEEPALIVE_SECONDS = 75.0
SOCKET_MODE = 0o660
# sizeof(sockaddr_un.sun_path) on Linux. Python and libuv keep its last byte for the
# NUL that ends the path: a Unix socket's path may have 107 bytes, not 108.
UNIX_PATH_BYTES = 108
# Name lookups that fail for good (no such name), not for now (EAI_AGAIN: DNS unreachable).
_UNKNOWN_NAME = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_SERVICE")
    if hasattr(socket, name)
)


# Container objects allocated between two collections of the youngest generation
# (Python's default: 700). Every streamed event leaves a few short-lived dicts and
# lists behind; at 700 a collection catches many of them still alive and promotes
# them, and the older generations' collections follow: ~8% of relay's core at 1,000
# streams, in pauses of up to 60 ms. At 10,000 nearly all are gone by then.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_collector() -> None:
    """Set the cyclic collector up for a long-running server, once start-up is done."""
    # What start-up built lives as long as the process: the collector need not
    # walk it again on every full collection (tens of ms each).
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


async def _served(path: str) -> OSError | None:
    """Why relay may not listen on the Unix socket at `path`: another process serves
    it (or may: it could not be told); None if there is none, or a stale one.

    asyncio removes a socket file found where it listens, stale or not: a second
    instance given the same RELAY_UNIX_SOCKET would take the socket over silently,
    leaving the first running and unreachable (on TCP the port would be taken)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 1.0)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # none, or stale: a socket nobody listens on refuses at once
    except TimeoutError:  # a listener too busy to accept is still a listener
        return OSError(errno.EADDRINUSE, "a process may be serving on it (it did not answer)")
    except OSError as exc:  # not ours to connect to (EACCES), or not a socket
        return OSError(exc.errno, f"cannot tell whether another process serves on it: {exc}")
    writer.close()
    return OSError(errno.EADDRINUSE, "another process is serving on it")


class ListenSettingError(ConfigError, OSError):
    """Where relay is told to listen can never work until a setting changes: a port it
    may not bind, a host that is no name, a socket path that is no socket. A setting
    error (`relay serve` exits 2: systemd then stops restarting it); an OSError still,
    for callers that catch what listening raises. Another process on the port or
    socket is not one: that ends, and a restart then serves."""

    def __str__(self) -> str:
        return str(self.strerror)


def _unusable_socket_path(path: str) -> ListenSettingError | None:
    """Why relay can never listen at the Unix socket `path`; None if it may."""
    size = len(os.fsencode(path))
    if size >= UNIX_PATH_BYTES:
        return ListenSettingError(
            errno.ENAMETOOLONG,
            f"RELAY_UNIX_SOCKET: cannot listen on {path}: the path is {size} bytes long;"
            f" a Unix socket's may be at most {UNIX_PATH_BYTES}, the NUL ending it included",
        )
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # nothing there (or it cannot be seen): binding will tell
    if stat.S_ISSOCK(mode):
        return None
    what = "a directory" if stat.S_ISDIR(mode) else "a file that is no socket"
    return ListenSettingError(
        errno.EEXIST,
        f"RELAY_UNIX_SOCKET: cannot listen on {path}: it is {what}"
        " (relay replaces only a socket left behind)",
    )


def _listen_failure(exc: OSError, settings: Settings) -> OSError:
    """`exc`, from listening where `settings` say, as one line naming the address (Python's
    names neither the address nor the path) and, when only a changed setting can help,
    the setting: a ListenSettingError."""
    where = settings.unix_socket or f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror) and exc.errno in _UNKNOWN_NAME:
        return ListenSettingError(
            exc.errno, f"RELAY_HOST: cannot listen on {where}: no such host ({exc.strerror})"
        )
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}")
    denied = f"cannot listen on {where}: {os.strerror(exc.errno).lower()}"
    if settings.unix_socket:
        return ListenSettingError(exc.errno, f"RELAY_UNIX_SOCKET: {denied}")
    if settings.port < 1024:
        denied += (
            " (a port below 1024 needs CAP_NET_BIND_SERVICE, which relay's unit does not"
            " grant: listen on a port from 1024 up, behind nginx)"
        )
    return ListenSettingError(exc.errno, f"RELAY_PORT: {denied}")


async def start_sites(runner: web.AppRunner, settings: Settings) -> list[web.BaseSite]:
    sites: list[web.BaseSite] = []
    if settings.unix_socket:
        if (unusable := _unusable_socket_path(settings.unix_socket)) is not None:
            raise unusable
        if (taken := await _served(settings.unix_socket)) is not None:
            raise OSError(taken.errno, f"cannot listen on {settings.unix_socket}: {taken.strerror}")
        sites.append(web.UnixSite(runner, settings.unix_socket, backlog=LISTEN_BACKLOG))
    else:
        sites.append(
            web.TCPSite(
                runner,
                settings.host,
                settings.port,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
            )
        )
    for site in sites:
        try:
            await site.start()
        except OSError as exc:
            raise _listen_failure(exc, settings) from None
    if settings.unix_socket:
        # Connecting needs write permission; with the unit's UMask=0027 the socket
        # would be the relay user's alone. Its group (the proxy's, e.g. www-data
        # added to relay's group) may connect; nobody else.
        os.chmod(settings.unix_socket, SOCKET_MODE)
    return sites


def relay_runner(app: web.Application) -> RelayAppRunner:
    """The runner that serves relay, for `relay serve` and `relay dev` alike."""
    # handler_cancellation: a client that hangs up cancels its handler, which
    # closes the provider request at once instead of at the next token.
    return RelayAppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_SECONDS,
        # An idle kept-alive connection is closed after this (aiohttp's own default
        # outside run_app is an hour); a half-sent head after relay.api.server.HEAD_SECONDS.
        keepalive_timeout=KEEPALIVE_SECONDS,
    )


def on_hangup() -> None:
    """SIGHUP, under `relay serve` and `relay dev` alike (StopSignals; `relay dev` also
    before its loop runs). Many daemons reload on it, and operators and logrotate hooks
    send it. By default it killed relay mid-answer, with no drain, and systemd counts
    death by SIGHUP as a clean stop (Restart=on-failure left the service down)."""
    log.warning(
        "SIGHUP ignored: relay reads its settings only as it starts and logs to its"
        " standard streams; restart it to apply a change (SIGTERM drains first)"
    )


class StopSignals:
    """SIGINT and SIGTERM, under `relay serve` and `relay dev` alike: the first one sets
    `requested` (relay then drains: see `drain`); another ends open streams at once.
    SIGHUP is logged and ignored (on_hangup)."""

    def __init__(self, in_flight: InFlight | None = None) -> None:
        self.requested = asyncio.Event()
        # What is in flight, once the app exists (`relay dev` listens for signals sooner).
        self.in_flight = in_flight
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.on_signal)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def on_signal(self) -> None:
        if self.requested.is_set() and self.in_flight is not None:
            self.in_flight.end_now()
        self.requested.set()


async def serve(settings: Settings, app: web.Application | None = None) -> None:
    app = app or create_app(settings)
    runner = relay_runner(app)
    in_flight = app[IN_FLIGHT]
    stop = StopSignals(in_flight).requested
    notifier = Notifier.from_env()
    starting = asyncio.create_task(notifier.extend_start(), name="relay-starting")
    try:
        # Start-up (migrations, pools) may wait on the database for a while: a
        # signal meanwhile stops it there, rather than once it is done.
        started = await _unless_stopped(runner.setup(), stop)
    except BaseException:
        # What start-up had opened before the failure is closed again.
        await runner.cleanup()
        raise
    finally:
        starting.cancel()
    if not started:
        notifier.notify("STOPPING=1", "STATUS=stopped during start-up")
        await runner.cleanup()
        log.info("relay stopped during start-up")
        return
    tune_collector()
    watchdog = asyncio.create_task(notifier.watchdog(), name="relay-watchdog")
    try:
        sites = await start_sites(runner, settings)
        log.info("relay listening", extra={"sites": [site.name for site in sites]})
        notifier.notify("READY=1", "STATUS=serving")
        await stop.wait()
        notifier.notify("STOPPING=1", "STATUS=draining")
        await drain(in_flight, sites, settings.drain_timeout)
    finally:
        # Cleanup contexts run here: pending history and receipts are committed.
        await runner.cleanup()
        watchdog.cancel()
        log.info("relay stopped")


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` to its end (True), or cancel it once `stop` is set first (False)."""
    task = asyncio.create_task(work, name="relay-start-up")
    stopped = asyncio.create_task(stop.wait(), name="relay-start-up-stop")
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            # Its cancellation unwinds what it was doing (an open transaction rolls back).
            await asyncio.wait((task,))
    if task.cancelled():
        return False
    task.result()  # start-up's own failure
    return True


async def drain(in_flight: InFlight, sites: list[web.BaseSite], timeout: float) -> None:
    """Stop accepting, then wait for what is in flight, at most `timeout` seconds."""
    in_flight.draining.set()
    for site in sites:
        await site.stop()
    log.info(
        "relay draining",
        extra={"requests": in_flight.requests, "streams": in_flight.streams, "timeout_s": timeout},
    )
    if await in_flight.wait_idle(timeout):
        return
    log.warning(
        "drain timeout passed; ending open streams",
        extra={"requests": in_flight.requests, "streams": in_flight.streams},
    )
    in_flight.end_now()
    await in_flight.wait_idle(min(GRACE_SECONDS, timeout))


def run(settings: Settings) -> int:
    return_large_blocks()  # before the first request body is read
    uvloop.run(serve(settings))
    return 0
