"""Who may call what: a JWT for /v1, the admin token for /admin."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import AUTHENTICATOR, CALLER, SETTINGS
from relay.errors import InvalidRequestError
from relay.services.auth import check_operator_token

# /v1 routes anyone may call (by route name); every other /v1 route needs a JWT.
PUBLIC_V1_ROUTES = frozenset({"get_attestation_report"})


def authorization(request: web.Request) -> str | None:
    """The request's one Authorization header (None if it has none).

    Two are refused (400, RFC 6750's invalid_request): the field holds one value
    (RFC 9110), and a proxy that checks or logs the last while relay reads the
    first would disagree with relay about who is calling."""
    values = request.headers.getall("Authorization", ())
    if len(values) > 1:
        raise InvalidRequestError(
            "Send one Authorization header; this request has more.",
            code="invalid_request",
            headers={"WWW-Authenticate": 'Bearer realm="relay", error="invalid_request"'},
        )
    return values[0] if values else None


def _matched(request: web.Request) -> bool:
    return request.match_info.http_exception is None


@web.middleware
async def access_control_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Unknown routes and wrong methods fall through to their 404/405.
    if _matched(request) and request.method != "OPTIONS":
        path = request.path
        if path.startswith("/v1/") and request.match_info.route.name not in PUBLIC_V1_ROUTES:
            authenticator = request.app[AUTHENTICATOR]
            request[CALLER] = await authenticator.authenticate(authorization(request))
        elif path == "/admin" or path.startswith("/admin/"):
            check_admin(request)
    return await handler(request)


def check_admin(request: web.Request) -> None:
    check_operator_token(
        authorization(request),
        request.app[SETTINGS].admin_token,
        "admin",
        "RELAY_ADMIN_TOKEN",
    )


def setup_access_control(app: web.Application) -> None:
    app.middlewares.append(access_control_middleware)
