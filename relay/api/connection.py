"""One client connection, as relay runs it: aiohttp's connection handler answering
even what never reaches the app in OpenAI's error shape, and noting what its
server's sweep (relay.api.server) holds to deadlines.

A request aiohttp cannot parse (a malformed head, a header past 8190 bytes, a
bad chunk size) never reaches relay's middlewares: aiohttp's connection handler
answers it itself, in plain text that quotes the offending bytes (a prompt, an
`Authorization` header) and names Python's and aiohttp's versions. relay's
connection handler answers it as every other error: JSON, no bytes echoed,
relay's own headers. So does a parsed head HTTP/1.1 tells a server to refuse:
another major version, Transfer-Encoding in HTTP/1.0 (relay.api.refusals).

An answer without a length to an HTTP/1.0 client ends with its connection (1.0
has no chunking), which aiohttp kept open.

The connection notes when it began to wait for a request head (`head_since`) and
whether its answer's bytes are being taken (`send_stalled`); the server's sweep
cuts those past their deadlines (`head_overdue`, `send_overdue`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from relay.api.error_mapping import error_response
from relay.api.refusals import HeadTimeoutError, refused_head, unparsed_error
from relay.api.security_headers import STATIC_HEADERS

log = logging.getLogger(__name__)

# After an answer that ends its connection while the client may still be sending (a
# 408 to a late head or body, a refused `Expect`, a malformed body), relay stops
# sending (FIN) but reads and drops what more comes for this long before it closes:
# closing at once on bytes still arriving makes the kernel answer them with a reset,
# and a reset that reaches the client before it has read the answer discards the
# answer (nginx's lingering close).
LINGER_SECONDS = 2.0


class RelayRequestHandler(RequestHandler):
    """One client connection; differs from aiohttp's in the errors it answers itself
    (heads it cannot parse or HTTP/1.1 refuses), in telling a handler that the body it
    is reading is malformed, in when it keeps the connection, and in noting when it
    began to wait for a request head (`head_since`, for RelayServer's sweep)."""

    __slots__ = ("_head_bytes", "_linger", "_unsent", "_unsent_since", "head_since")
    head_since: float | None
    _head_bytes: int
    _linger: bool  # close lingering once the answer is sent
    _unsent: int
    _unsent_since: float

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.head_since = self._loop.time()  # the first head is awaited from now
        self._head_bytes = 0
        self._linger = False
        self._unsent, self._unsent_since = 0, self.head_since
        super().connection_made(transport)

    def send_stalled(self, now: float, deadline: float) -> bool:
        """Whether bytes written to the client have waited `deadline` seconds, the
        buffer holding them neither drained nor changed since (checked by the sweep)."""
        transport = self.transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if unsent == 0 or unsent != self._unsent:
            self._unsent, self._unsent_since = unsent, now
            return False
        return now - self._unsent_since >= deadline

    def send_overdue(self) -> None:
        """The client took no bytes for the send deadline: its connection is dropped
        (a handler still running is cancelled, as when a client leaves)."""
        log.info(
            "client took no bytes of its answer",
            extra={
                "peer": self.peername[0] if isinstance(self.peername, tuple) else None,
                "bytes_unsent": self._unsent,
            },
        )
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        answering_whole = self._body_received()  # before these bytes: they may end it
        super().data_received(data)
        if len(self._messages) == queued:  # no head was completed: a piece of one, or of a body
            # Waiting for a request (idle), or for the first one before aiohttp's
            # connection task first ran and made its waiter, or with the request being
            # answered whole already: a head begins. (Not the rest of a body, nor one
            # aiohttp drains after an answer: that is no head.)
            waiter = self._waiter
            waiting = waiter is not None and not waiter.done()
            if data and (
                waiting or (waiter is None and self._request_count == 0) or answering_whole
            ):
                self._head_begun(len(data))
            return
        self.head_since = None
        # The packet that completed a head may hold the start of the next (a client
        # pipelining, or one sending a byte of it and nothing more): it is timed from
        # now. Told apart when the last head has no body: it then ends the packet.
        message, payload = self._messages[-1]
        if payload is EMPTY_PAYLOAD and not isinstance(message, _ErrInfo):
            head_end = data.rfind(b"\r\n\r\n")
            if head_end >= 0 and (left := len(data) - head_end - 4) > 0:
                self._head_begun(left)
        self._refuse_heads(queued)
        # aiohttp's C parser reports a body it cannot parse (a bad chunk size) that
        # arrives after its head was handed on as the error of a next request. That
        # waits behind the handler, and the handler waits for the rest of the body
        # until relay gives up on it (a 408 after BODY_SECONDS). The error is the
        # body's: its reader gets it, as with aiohttp's Python parser, and the
        # connection ends after the answer, since nothing after it can be framed (no
        # lingering to drain a body that cannot end: that would re-raise the error).
        request = self._current_request
        if request is None:
            return
        error, _ = self._messages[-1]
        if isinstance(error, _ErrInfo) and not request.content.is_eof():
            self._messages.pop()
            request.content.set_exception(web.RequestPayloadError(error.message))
            self.end_after_answer()

    def _head_begun(self, size: int) -> None:
        """`size` bytes of a request head came in: timed from the first of them."""
        if self.head_since is None:
            self.head_since, self._head_bytes = self._loop.time(), 0
        self._head_bytes += size

    def _body_received(self) -> bool:
        """Whether the request being answered has its whole body: what comes next is
        the next request's head (pipelined behind it)."""
        request = self._current_request
        return request is not None and request.content.is_eof()

    def _refuse_heads(self, first: int) -> None:
        """Answer an error in place of each head parsed from `first` on that HTTP/1.1
        refuses, as aiohttp answers one it cannot parse (and then closes); end the
        connection with the answer to one asking to switch protocols."""
        messages = self._messages
        for index in range(first, len(messages)):
            message, payload = messages[index]
            if isinstance(message, _ErrInfo):
                continue
            if message.upgrade:
                # relay switches to no protocol. aiohttp's C parser drops what came
                # behind a head asking for one it does not know (`Upgrade: h2c` with
                # `Connection: Upgrade`, as curl --http2 sends) in the same read: a
                # request pipelined there was never answered, its client left waiting.
                # Said closed, the connection ends with this answer, and the client
                # sends again what it got no answer to (RFC 9112 section 9.3.2).
                messages[index] = (message._replace(should_close=True), payload)
            if message.version == HttpVersion11:
                continue
            if (refusal := refused_head(message)) is not None:
                # What the parser still feeds the request's body is never read.
                messages[index] = (_ErrInfo(400, refusal, ""), EMPTY_PAYLOAD)

    def head_overdue(self, deadline: float) -> None:
        """The head awaited since `head_since` is past `deadline` seconds: answer 408 to
        a part of one, close a connection that sent none."""
        since, self.head_since = self.head_since, None
        waiter = self._waiter
        if since is None:
            return  # a head came in meanwhile
        if waiter is None or waiter.done():
            # A handler is still answering: the next head is cut once it is done, if
            # still not whole by then (timed from its first byte all the same).
            self.head_since = since
            return
        received = self._head_bytes
        log.info(
            "request head timed out",
            extra={
                "peer": self.peername[0] if isinstance(self.peername, tuple) else None,
                "requests_before": self._request_count,
                "bytes_in": received,
                "waited_ms": round((self._loop.time() - since) * 1000, 2),
            },
        )
        if not received:  # no request to answer: a response would answer nothing asked
            self.force_close()
            return
        error = HeadTimeoutError(f"The request head did not arrive within {deadline:g} s.")
        # Answered as a head aiohttp could not parse: the error handler sends it, then closes.
        self._messages.append((_ErrInfo(status=408, exc=error, message=""), EMPTY_PAYLOAD))
        waiter.set_result(None)
        self.close()  # what more arrives of the head is not parsed
        self._linger = True  # the client may still be sending it

    def _close_lingering(self) -> None:
        """End the connection as LINGER_SECONDS says, the answer sent: no more bytes
        out, those coming in dropped (data_received, the connection closing), closed
        when the client closes its side or the time is up, whichever comes first."""
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            return
        self._force_close = True  # aiohttp's connection task then leaves the transport open
        transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, transport.close)

    def end_after_answer(self) -> None:
        """End the connection once the answer in progress is sent, without reading
        (aiohttp lingers up to 10 s for it) the rest of a request body nobody will
        read: what still comes of it is dropped, as after a 408 to a late head."""
        self._lingering_time = 0.0
        self._close = True
        self._linger = True

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        resp, reset = await super().finish_response(request, resp, start_time)
        if self._linger and not reset:
            self._close_lingering()
        # An HTTP/1.0 connection persists only when the answer says so (RFC 9112
        # appendix C.2.2): aiohttp does not say it of an answer without a length,
        # whose end is the connection's, and must not keep the connection either.
        if (
            request.version != HttpVersion11
            and resp.keep_alive
            and resp.headers.get(hdrs.CONNECTION) != "keep-alive"
        ):
            resp.force_close()
        return resp, reset

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HeadTimeoutError):  # logged by head_overdue
            # aiohttp's own: it logs (relay.logs.MalformedRequestFilter keeps the bytes
            # out of the log) and refuses once part of a response was sent.
            super().handle_error(request, status, exc, message)
        response = error_response(unparsed_error(status, exc))
        response.headers.update(STATIC_HEADERS)
        response.force_close()  # what follows a malformed head cannot be trusted
        return response
