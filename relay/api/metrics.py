"""GET /metrics: Prometheus text, behind a bearer token when RELAY_METRICS_TOKEN is set."""

from __future__ import annotations

from aiohttp import web

from relay import metrics
from relay.api.access_control import authorization
from relay.appkeys import DATABASE, SETTINGS
from relay.services.auth import check_operator_token


def check_metrics_token(request: web.Request) -> None:
    expected = request.app[SETTINGS].metrics_token
    if expected:  # unset: /metrics is open (the nginx example denies it from outside)
        check_operator_token(authorization(request), expected, "metrics", "RELAY_METRICS_TOKEN")


async def get_metrics(request: web.Request) -> web.Response:
    check_metrics_token(request)
    database = request.app.get(DATABASE)
    body = metrics.render(database.pool_stats() if database is not None else None)
    return web.Response(
        body=body, headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"}
    )
