"""The HTTP server relay runs: aiohttp's, making relay's connections
(relay.api.connection) and holding them to two deadlines.

A connection has HEAD_SECONDS to deliver a whole request head: from its opening,
and on a kept-alive connection from the first byte of its next request. aiohttp
bounds only the idle wait (keepalive_timeout, 75 s), which a client sending a
head a byte at a time (slowloris) stretched to 75 s per connection. One sweep over
the open connections enforces it; a head that arrives whole in one read, as from
every HTTP client, costs nothing more. A late head gets a 408; a connection that
sent nothing is closed. The body has its own deadline (relay.api.body).

An answer must leave within SEND_SECONDS too: a client that takes none of its bytes
for that long (its connection's send buffer neither drains nor changes) is cut off.
A stream's pipe cuts such a client itself; the same sweep does it for any answer,
so that a client asking for large pages and never reading them cannot make relay
hold them in memory for as long as it keeps the connection.

A request aiohttp could not parse (or relay refused as parsed, or whose head came
too late) is answered on a stand-in head of aiohttp's, in HTTP/1.0: its answer's
status line said HTTP/1.0 to clients speaking HTTP/1.1. relay's server makes that
request in HTTP/1.1, the highest version relay speaks, which a server sends to any
HTTP/1.x client (RFC 9110 section 6.2); the answer also says `Connection: close`.

Request bodies reach relay as sent: aiohttp's decoding of a `Content-Encoding`
is off. relay refuses compressed bodies (415, relay.api.body), and aiohttp would
otherwise still inflate one while draining it after that answer, on the event
loop: a 2 MB gzip of zeros held every request of the instance for seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.web_protocol import ERROR, RequestHandler

from relay.api.connection import RelayRequestHandler
from relay.api.refusals import REQUEST_LINE_BYTES
from relay.upstreams.pipe import SEND_SECONDS

# Every HTTP client writes a head at once, and it is under 16 kB: 10 s leaves a
# mobile link room for a few retransmissions (TCP's first one waits 1 s, then 2,
# then 4). nginx's client_header_timeout is 60 s; relay serves apps, not people.
HEAD_SECONDS = 10.0

# aiohttp's stand-in head for a request it answers without parsing it (ERROR), in HTTP/1.1.
_UNPARSED_HEAD = ERROR._replace(version=HttpVersion11)
RequestFactory = Callable[..., web.BaseRequest]


class RelayServer(web.Server):
    """aiohttp's low-level server, making `RelayRequestHandler` connections and
    sweeping them for request heads past `head_seconds` and answers not taken for
    `send_seconds`."""

    head_seconds = HEAD_SECONDS
    send_seconds = SEND_SECONDS
    _sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return RelayRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._sweep_every(), self._sweep_connections)

    def _sweep_every(self) -> float:
        # A head is cut between head_seconds and a quarter more (at most a second more).
        return min(1.0, self.head_seconds / 4)

    def _sweep_connections(self) -> None:
        """Cut the heads past their deadline, and the clients that took no bytes of
        their answers for the send deadline; runs while there are connections."""
        if not self._connections:
            self._sweep = None
            return
        self._sweep = self._loop.call_later(self._sweep_every(), self._sweep_connections)
        now = self._loop.time()
        overdue = now - self.head_seconds
        for handler in self.connections:  # a copy: cutting one may end it
            if not isinstance(handler, RelayRequestHandler):
                continue
            since = handler.head_since
            if since is not None and since <= overdue:
                handler.head_overdue(self.head_seconds)
            elif handler.send_stalled(now, self.send_seconds):
                handler.send_overdue()

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().shutdown(timeout)


class RelayAppRunner(web.AppRunner):
    """`web.AppRunner` whose server makes `RelayRequestHandler` connections, which
    leave request bodies undecoded, bound the request line by REQUEST_LINE_BYTES and
    the wait for a request head by `head_seconds`."""

    def __init__(
        self,
        app: web.Application,
        *,
        head_seconds: float = HEAD_SECONDS,
        send_seconds: float = SEND_SECONDS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("max_line_size", REQUEST_LINE_BYTES)
        super().__init__(app, **kwargs)
        self._head_seconds = head_seconds
        self._send_seconds = send_seconds

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp chooses the connection class in Server.__call__ alone, and the app
        # builds its Server itself (Application._make_handler); the subclass only
        # overrides that choice.
        server.__class__ = RelayServer
        assert isinstance(server, RelayServer)
        server.head_seconds = self._head_seconds
        server.send_seconds = self._send_seconds
        # Server's request_factory, which its connections call to make each request.
        server.request_factory = unparsed_in_http11(server.request_factory)
        return server


def unparsed_in_http11(make_request: RequestFactory) -> RequestFactory:
    """`make_request`, making a request aiohttp could not parse in HTTP/1.1 (module
    docstring): its answer's status line then says HTTP/1.1."""

    def make(message: RawRequestMessage, *args: Any) -> web.BaseRequest:
        return make_request(_UNPARSED_HEAD if message is ERROR else message, *args)

    return make
