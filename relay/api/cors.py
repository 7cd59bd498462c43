"""CORS for browser clients, from the origins in RELAY_CORS_ORIGINS only."""

from __future__ import annotations

import contextlib
import ipaddress
import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from relay.api.conversation_header import CONVERSATION_HEADER
from relay.appkeys import SETTINGS

# Response headers a browser script may read (the Fetch spec hides any other but the
# safelisted few): relay's own, and those OpenAI's SDKs decide retries by.
EXPOSED = ", ".join(
    (
        "X-Request-Id",
        "X-Receipt-Id",
        "Relay-Conversation-Id",
        "Retry-After",
        "retry-after-ms",
        "x-should-retry",
        "WWW-Authenticate",
        "X-RateLimit-Limit-Requests",
        "X-RateLimit-Remaining-Requests",
        "X-RateLimit-Reset-Requests",
        "X-RateLimit-Limit-Tokens",
        "X-RateLimit-Remaining-Tokens",
        "X-RateLimit-Reset-Tokens",
    )
)
# Granted when a preflight names no headers, or names them malformed: relay's own.
ALLOWED_HEADERS = f"Authorization, Content-Type, X-Request-Id, {CONVERSATION_HEADER}"
MAX_AGE = "600"
_TOKEN_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


# A browser leaves a scheme's default port out of Origin (the Fetch spec's serialisation).
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalise_origin(origin: str) -> str:
    scheme, _, host = origin.strip().rstrip("/").lower().partition("://")
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port:
        host = host.removesuffix(default_port)
    if host.startswith("["):  # an IPv6 address, which a browser writes compressed
        address, _, port = host[1:].partition("]")
        with contextlib.suppress(ValueError):
            host = f"[{ipaddress.IPv6Address(address).compressed}]{port}"
    return f"{scheme}://{host}"


def allowed_origin(request: web.Request) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when this origin gets no CORS."""
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS].cors_origins
    if not origin or not allowed:
        return None
    if "*" in allowed:
        return "*"
    wanted = normalise_origin(origin)
    return origin if any(normalise_origin(o) == wanted for o in allowed) else None


def _allowed_methods(request: web.Request) -> set[str] | None:
    """Methods the requested path answers, or None when no route has that path."""
    exc = request.match_info.http_exception
    if exc is None:
        return {request.method}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return set(exc.allowed_methods)
    return None


def _server_methods(app: web.Application) -> str:
    """Every method some path of `app` answers, OPTIONS included."""
    methods = {route.method for route in app.router.routes() if route.method != hdrs.METH_ANY}
    return ", ".join(sorted(methods | {"OPTIONS"}))


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer OPTIONS for known paths (and `*`, the server) before auth, and preflights
    for allowed origins."""
    if request.method != "OPTIONS":
        return await handler(request)
    if request.raw_path == "*":  # RFC 9110 9.3.7: a question about the server as a whole
        return web.Response(status=204, headers={"Allow": _server_methods(request.app)})
    methods = _allowed_methods(request)
    if methods is None:
        return await handler(request)  # an unknown path stays a 404
    methods.discard("OPTIONS")
    allow = ", ".join(sorted(methods | {"OPTIONS"}))
    response = web.Response(status=204, headers={"Allow": allow})
    origin = allowed_origin(request)
    wanted = request.headers.get("Access-Control-Request-Method")
    if origin is not None and wanted in methods:
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        # Echo what the browser asks for (the OpenAI SDK adds its own headers);
        # only well-formed header names, and only for an allowed origin.
        headers = asked if asked and _TOKEN_LIST.fullmatch(asked) else ALLOWED_HEADERS
        response.headers.update(
            {
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": headers,
                "Access-Control-Max-Age": MAX_AGE,
            }
        )
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if not request.app[SETTINGS].cors_origins:
        return
    # Caches must not hand one origin's answer to another.
    vary = response.headers.get("Vary")
    if not vary:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"
    origin = allowed_origin(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    if request.method != "OPTIONS":
        response.headers["Access-Control-Expose-Headers"] = EXPOSED


def setup_cors(app: web.Application) -> None:
    app.middlewares.append(preflight_middleware)
    app.on_response_prepare.append(_on_prepare)
