"""GET /health: each backend's status and round-trip time, bounded by a timeout."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import __version__
from relay.api.body import json_response
from relay.appkeys import (
    ATTESTATION,
    DATABASE,
    HEALTH_PROBES,
    IN_FLIGHT,
    RATE_LIMITER,
    REDIS,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.services.health import SharedProbes
from relay.upstreams.health import ProviderHealth


def setup_health(app: web.Application) -> None:
    app[HEALTH_PROBES] = SharedProbes(ProviderHealth(app[SETTINGS].upstreams))


def attestation_status(app: web.Application) -> dict[str, Any]:
    """How receipts are signed; says so plainly when no TEE vouches for the key."""
    attestation = app[ATTESTATION]
    status: dict[str, Any] = {
        "tee_type": attestation.tee_type,
        "receipts": app[SETTINGS].receipts,
    }
    if attestation.warning:
        status["warning"] = attestation.warning
    return status


async def get_health(request: web.Request) -> web.Response:
    if request.app[IN_FLIGHT].draining.is_set():
        # A load balancer takes this instance out while its streams finish.
        return json_response(
            {"status": "draining", "version": __version__},
            status=503,
            headers={"Cache-Control": "no-store"},
        )
    app = request.app
    probed = await app[HEALTH_PROBES].run(
        app[DATABASE].ping, app[REDIS].ping, app[UPSTREAM_SESSION], app[SETTINGS].health_timeout
    )
    postgres, redis = probed.postgres, dict(probed.redis)  # shared: mark a copy
    link = request.app[RATE_LIMITER].link
    if redis["status"] == "ok" and not link.up:
        # Redis answers a ping but not the rate limiter (it refuses writes, say):
        # limits are per instance all the same.
        redis["error"] = link.error
    if redis["status"] != "ok" or not link.up:
        # relay serves on without Redis (rate limits fall back to in-process
        # buckets), so an outage degrades it rather than taking it down.
        redis["status"] = "degraded"
    checks = {"postgres": postgres, "redis": redis}
    healthy = all(check["status"] in ("ok", "degraded") for check in checks.values())
    # A provider that is down degrades relay but never fails /health: a 503 would
    # have load balancers pull every instance for an outage none of them can fix,
    # while history, receipts and auth still work.
    reports = [*checks.values(), *probed.upstreams.values()]
    degraded = healthy and any(report["status"] != "ok" for report in reports)
    overall = "degraded" if degraded else "ok" if healthy else "down"
    return json_response(
        {
            "status": overall,
            "version": __version__,
            "checks": checks,
            "upstreams": probed.upstreams,
            "attestation": attestation_status(request.app),
        },
        status=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )
