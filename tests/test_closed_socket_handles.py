"""uvloop may keep the closed poll handle of a socket number whose connection failed:
the next socket given that number fails to register (RuntimeError) before anything is
sent. relay tries again on another socket; only when that keeps failing is the server
taken for unreachable, in relay's terms, never a 500."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest

from relay import sockets
from relay.errors import DependencyUnavailableError, UpstreamError
from relay.sockets import purge_closed_handles
from relay.stores.database import Database, connect
from relay.stores.database_failures import registered
from relay.upstreams.forwarder import create_session, open_provider_response
from relay.upstreams.health import probe_provider
from relay.upstreams.routing import Route

CLOSED_HANDLE = RuntimeError(
    "unable to perform operation on <UVPoll closed=True activity=0>; the handler is closed"
)
BODY = orjson.dumps({"model": "sim-large", "messages": [{"role": "user", "content": "Hi"}]})


class ClosedHandles:
    """A client session whose next `failures` connections meet a closed handle."""

    def __init__(self, session: Any, failures: int) -> None:
        self._session = session
        self.failures = failures

    def _request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def connect() -> Any:
            if self.failures:
                self.failures -= 1
                raise CLOSED_HANDLE
            return await getattr(self._session, method)(*args, **kwargs)

        return connect()

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._request("post", *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._request("get", *args, **kwargs)


async def forward(simulator, failures: int) -> bytes:
    upstream = simulator.upstream()
    async with create_session() as real:
        session = ClosedHandles(real, failures)
        route = Route("sim-large", upstream, "sim-large")
        async with open_provider_response(session, route, BODY, stream=False, longest=30) as reply:
            return await reply.whole()


async def test_a_provider_connection_meeting_a_closed_handle_is_made_again(simulator):
    answer = orjson.loads(await forward(simulator, failures=2))
    assert answer["object"] == "chat.completion"


async def test_a_provider_whose_connections_keep_failing_so_is_unreachable(simulator):
    with pytest.raises(UpstreamError) as refused:
        await forward(simulator, failures=3)
    assert (refused.value.status, refused.value.code) == (502, "upstream_unreachable")
    assert not simulator.state.requests


async def test_the_health_probe_makes_its_connection_again(simulator):
    async with create_session() as real:
        status, latency, error = await probe_provider(
            ClosedHandles(real, 2), simulator.upstream(), timeout=5
        )
    assert (status, error) == ("ok", None)
    assert latency is not None


async def test_a_database_connection_meeting_closed_handles_is_unavailable(database_url):
    attempts = 0

    async def connecting() -> Database:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise CLOSED_HANDLE
        return await Database.open(database_url, size=1, timeout=5)

    db = await registered(connecting)
    await db.close()

    async def failing() -> None:
        raise CLOSED_HANDLE

    with pytest.raises(DependencyUnavailableError):
        await registered(failing)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_database_that_refuses_connections_leaves_no_handle_behind(simulator):
    # The real thing: aiopg, failing to connect, leaves its socket's closed poll handle
    # in uvloop; the next sockets (a provider's) were given that number and failed.
    refusing = f"postgresql://relay@127.0.0.1:{unused_port()}/relay"
    for _ in range(3):
        failures = await asyncio.gather(
            *[connect(refusing, timeout=2) for _ in range(8)], return_exceptions=True
        )
        assert all(isinstance(failure, DependencyUnavailableError) for failure in failures)
    async with create_session() as session:
        for _ in range(10):  # not through `registered`: no second try to hide behind
            async with session.get(
                simulator.upstream().models_url, headers={"Connection": "close"}
            ) as response:
                assert response.status in (200, 401)


async def test_a_purge_leaves_live_registrations_alone():
    loop = asyncio.get_running_loop()
    assert purge_closed_handles(loop) == 0
    kept, peer = socket.socketpair()  # a registration of someone's, under a low number
    readable = asyncio.Event()
    loop.add_reader(kept.fileno(), readable.set)
    try:
        purge_closed_handles(loop)
        peer.send(b"x")
        await asyncio.wait_for(readable.wait(), 2)
    finally:
        loop.remove_reader(kept.fileno())
        kept.close()
        peer.close()


async def test_a_wait_for_a_busy_pool_clears_no_handles(database_url, monkeypatch):
    # A timeout waiting for a free pooled connection made no connection: nothing was
    # left behind, and clearing (a millisecond, the loop held) is not paid for it.
    purges: list[object] = []
    monkeypatch.setattr(sockets, "purge_closed_handles", purges.append)
    db = await Database.open(database_url, size=1, timeout=0.2)
    try:
        async with db.cursor():
            with pytest.raises(DependencyUnavailableError):
                async with db.cursor():
                    pass
        assert purges == []
    finally:
        await db.close()
