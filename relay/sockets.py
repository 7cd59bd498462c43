"""What every connection relay opens meets on uvloop: a closed poll handle left behind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

REGISTER_ATTEMPTS = 3
# How many of the lowest free socket numbers a purge clears: new sockets are given the
# lowest free number, so those are where the next connections land.
PURGED_NUMBERS = 64


async def registered(connecting: Callable[[], Awaitable[T]]) -> T:
    """What `connecting` gives (a new connection, or one from a pool, or a response on
    one), however uvloop fares; the last attempt's RuntimeError otherwise.

    A connection aiopg fails to make (the server down, refusing) leaves uvloop holding
    a closed poll handle under its socket's number, and registering any later socket
    given that number (as aiopg, aiohttp and redis-py do while they connect, before
    anything is sent) raises RuntimeError, whatever the server: one PostgreSQL outage
    made every new provider connection fail so. Each such failure clears the handles
    left under the numbers new sockets will be given (`purge_closed_handles`), and the
    connection is tried again; only when that keeps failing is the server taken for
    unreachable.
    """
    for _ in range(REGISTER_ATTEMPTS - 1):
        try:
            return await connecting()
        except RuntimeError:
            purge_closed_handles(asyncio.get_running_loop())
    return await connecting()


def purge_closed_handles(loop: asyncio.AbstractEventLoop) -> int:
    """Clear the poll handles uvloop keeps under the lowest free socket numbers; how
    many it found. Each number is taken by a socket of our own while it is looked at,
    so a handle found under it can only be one left behind."""
    held: list[socket.socket] = []
    found = 0
    try:
        for _ in range(PURGED_NUMBERS):
            probe = socket.socket()
            held.append(probe)
            try:
                loop.add_reader(probe.fileno(), _ignore)
            except RuntimeError:  # a closed handle: removing both sides drops it
                found += 1
            loop.remove_reader(probe.fileno())
            loop.remove_writer(probe.fileno())
    except OSError:  # out of sockets: the numbers looked at are done
        pass
    finally:
        for probe in held:
            probe.close()
    return found


def _ignore() -> None:
    pass
