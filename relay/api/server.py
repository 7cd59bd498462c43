"""The HTTP server relay runs: aiohttp's, answering even what never reaches the app
in OpenAI's error shape.

A request aiohttp cannot parse (a malformed head, a header past 8190 bytes, a
bad chunk size) never reaches relay's middlewares: aiohttp's connection handler
answers it itself, in plain text that quotes the offending bytes (a prompt, an
`Authorization` header) and names Python's and aiohttp's versions. relay's
connection handler answers it as every other error: JSON, no bytes echoed,
relay's own headers.

Request bodies reach relay as sent: aiohttp's decoding of a `Content-Encoding`
is off. relay refuses compressed bodies (415, relay.api.body), and aiohttp would
otherwise still inflate one while draining it after that answer, on the event
loop: a 2 MB gzip of zeros held every request of the instance for seconds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, InvalidHeader, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from relay.api.error_mapping import error_response
from relay.api.security_headers import STATIC_HEADERS
from relay.errors import InvalidRequestError, RelayError, UpstreamTimeoutError

# A request line (its target, mostly) may be this long: a search query of 10 kB
# reaches relay, to be refused in words (400, MAX_QUERY_CHARS) rather than by the
# parser. A header line may be 8190 bytes, aiohttp's default. The limits differ so
# that aiohttp's LineTooLong, which carries only the limit it hit, tells a long URL
# (414) from a long header (431).
REQUEST_LINE_BYTES = 16384


def unparsed_error(status: int, exc: BaseException | None) -> RelayError:
    """What aiohttp's connection handler answers itself, as a RelayError: a request it
    could not parse, or (never expected: the error middleware catches everything) a
    handler's exception or timeout."""
    if status == 504:  # a handler's own timeout escaped it
        return UpstreamTimeoutError("The request timed out.", code="timeout")
    if status >= 500:
        return RelayError("Internal error.")
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (REQUEST_LINE_BYTES,):
            # RFC 9112 section 3: a target too long to parse MUST be a 414.
            why, status = "its request target (URL) is too long", 414
        else:
            why, status = "a header is too long", 431  # RFC 6585
    elif isinstance(exc, BadHttpMethod):
        why = "it does not start with an HTTP method"
    elif isinstance(exc, InvalidHeader):
        why = "a header is malformed"
    else:
        why = "its head or framing is malformed"
    error = InvalidRequestError(
        f"The request is not valid HTTP/1.1: {why}.", code="malformed_request"
    )
    error.status = status
    return error


class RelayRequestHandler(RequestHandler):
    """One client connection; differs from aiohttp's in the errors it answers itself,
    and in telling a handler that the body it is reading is malformed."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        # aiohttp's C parser reports a body it cannot parse (a bad chunk size) that
        # arrives after its head was handed on as the error of a next request. That
        # waits behind the handler, and the handler waits for the rest of the body
        # until relay gives up on it (a 408 after BODY_SECONDS). The error is the
        # body's: its reader gets it, as with aiohttp's Python parser, and the
        # connection ends after the answer, since nothing after it can be framed (no
        # lingering to drain a body that cannot end: that would re-raise the error).
        request = self._current_request
        if request is None or len(self._messages) == queued:
            return
        error, _ = self._messages[-1]
        if isinstance(error, _ErrInfo) and not request.content.is_eof():
            self._messages.pop()
            request.content.set_exception(web.RequestPayloadError(error.message))
            self.end_after_answer()

    def end_after_answer(self) -> None:
        """Close the connection once the answer in progress is sent, without waiting
        (aiohttp lingers up to 10 s) for the rest of a request body nobody will read."""
        self._lingering_time = 0.0
        self._close = True

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own: it logs (relay.logs.MalformedRequestFilter keeps the bytes
        # out of the log) and refuses once part of a response was sent.
        super().handle_error(request, status, exc, message)
        response = error_response(unparsed_error(status, exc))
        response.headers.update(STATIC_HEADERS)
        response.force_close()  # what follows a malformed head cannot be trusted
        return response


class RelayServer(web.Server):
    """aiohttp's low-level server, making `RelayRequestHandler` connections."""

    def __call__(self) -> RequestHandler:
        return RelayRequestHandler(self, loop=self._loop, **self._kwargs)


class RelayAppRunner(web.AppRunner):
    """`web.AppRunner` whose server makes `RelayRequestHandler` connections, which
    leave request bodies undecoded and bound the request line by REQUEST_LINE_BYTES."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("max_line_size", REQUEST_LINE_BYTES)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp chooses the connection class in Server.__call__ alone, and the app
        # builds its Server itself (Application._make_handler); the subclass only
        # overrides that choice.
        server.__class__ = RelayServer
        return server
