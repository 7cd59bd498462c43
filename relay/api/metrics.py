"""GET /metrics: Prometheus text, behind a bearer token when RELAY_METRICS_TOKEN is set."""

from __future__ import annotations

import hmac

from aiohttp import web

from relay import metrics
from relay.appkeys import DATABASE, SETTINGS
from relay.errors import AuthenticationError
from relay.services.auth import bearer_token


def check_metrics_token(request: web.Request) -> None:
    expected = request.app[SETTINGS].metrics_token.encode()
    if not expected:
        return
    try:
        given = bearer_token(request.headers.get("Authorization")).encode()
    except AuthenticationError:
        # bearer_token's message points at /auth/token, which is no help here.
        raise AuthenticationError(
            "Send the metrics token as 'Authorization: Bearer <RELAY_METRICS_TOKEN>'.",
            code="invalid_metrics_token",
        ) from None
    # compare_digest takes the same time wherever the first difference is.
    if not hmac.compare_digest(given, expected):
        raise AuthenticationError("Invalid metrics token.", code="invalid_metrics_token")


async def get_metrics(request: web.Request) -> web.Response:
    check_metrics_token(request)
    database = request.app.get(DATABASE)
    body = metrics.render(database.pool_stats() if database is not None else None)
    return web.Response(
        body=body, headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"}
    )
