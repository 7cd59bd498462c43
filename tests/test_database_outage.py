"""PostgreSQL unreachable: every attempt to reach it is a 503's error, on relay's loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from relay.devservers import free_port
from relay.errors import DependencyUnavailableError
from relay.stores.database import Database, connect


async def test_a_refused_server_is_unavailable_every_time_not_every_other():
    """uvloop keeps the poll handle of a refused connection's socket number, closed;
    the next socket given that number fails to register with a RuntimeError, which
    would be a 500 with a traceback for every other request while PostgreSQL is down."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/relay"
    for _ in range(4):
        with pytest.raises(DependencyUnavailableError):
            await Database.open(url, size=2, timeout=2)
        with pytest.raises(DependencyUnavailableError):
            await connect(url, timeout=2)
