"""Security headers on every response, errors and streams included."""

from __future__ import annotations

from aiohttp import web

from relay.appkeys import SETTINGS

# Two years, the preload list's minimum; only sent when relay is told it is
# reached over HTTPS, since browsers pin it for that long.
HSTS = "max-age=63072000; includeSubDomains"
# The API serves JSON and streams, never pages; /docs sets its own policy.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": API_CSP,
}
# Also on what relay answers before a request reaches the app (relay.api.connection).
# "Server" is set over aiohttp's own, which names Python, aiohttp and both versions.
STATIC_HEADERS = {**_HEADERS, "Server": "relay"}


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # setdefault: a handler that needs a different policy (the docs page) sets its own.
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Server"] = STATIC_HEADERS["Server"]
    if "Authorization" in request.headers:
        # An answer to a credentialed request is the caller's alone (transcripts, search
        # results, receipts). RFC 9111 keeps shared caches from storing it, but not a
        # browser's or a mobile HTTP stack's own cache, which would keep a conversation
        # on disk past its DELETE. (A stream says no-cache, as the SSE contract has it.)
        response.headers.setdefault("Cache-Control", "no-store")
    if request.app[SETTINGS].force_https:
        response.headers.setdefault("Strict-Transport-Security", HSTS)


def setup_security_headers(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)
