"""`Expect: 100-continue`, answered once relay is about to read the body.

aiohttp's default sends "100 Continue" as soon as the head arrives, before any
middleware: a client was then invited to upload a body that relay refuses at once
(no token, too large, rate limited). RFC 9110 section 10.1.1: a server that can
decide from the head alone MUST send that final status instead. Here the interim
answer goes out when the body is read (relay.api.body), after those checks; a
request answered without reading its body is answered and its connection closed
(RFC 9110 section 10.1.1 asks a server to say which: the client holds a body it
was never invited to send).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http import HttpVersion11

from relay.api.connection import RelayRequestHandler
from relay.errors import InvalidRequestError

# Set while a client waits for "100 Continue" relay has not sent yet.
CONTINUE_AWAITED = web.RequestKey("continue_awaited", bool)
# Set when the request expects something else, which relay cannot meet.
EXPECTATION_UNMET = web.RequestKey("expectation_unmet", bool)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ExpectationFailedError(InvalidRequestError):
    status = 417
    code = "expectation_failed"


async def continue_when_read(request: web.Request) -> web.StreamResponse | None:
    """The expect handler of every route (aiohttp calls it before the middlewares).
    It answers nothing itself: what it finds is acted on when the body is read, so
    that every answer, a 417 too, passes relay's middlewares (request id, CORS)."""
    if request.version != HttpVersion11:
        return None  # an HTTP/1.0 client sends its body regardless
    request[CONTINUE_AWAITED] = True  # the client holds its body back, whatever it expects
    if request.headers.get("Expect", "").lower() != "100-continue":
        request[EXPECTATION_UNMET] = True
    return None


async def send_continue(request: web.Request) -> None:
    """Invite the body, if its client waits to be (call just before reading it); a
    request that expects what relay cannot meet is refused here (417)."""
    if request.pop(EXPECTATION_UNMET, False):
        raise ExpectationFailedError("relay meets only the expectation '100-continue'.")
    if request.pop(CONTINUE_AWAITED, False):
        await request.writer.write(_CONTINUE)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(CONTINUE_AWAITED):  # answered before its body was invited: see above
        response.force_close()
        response.headers["Connection"] = "close"  # the head is already made when this runs
        if isinstance(request.protocol, RelayRequestHandler):
            request.protocol.end_after_answer()


def setup_expect(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)
