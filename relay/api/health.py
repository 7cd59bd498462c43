"""GET /health: each backend's status and round-trip time, bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from relay import __version__
from relay.api.body import json_response
from relay.appkeys import ATTESTATION, DATABASE, IN_FLIGHT, REDIS, SETTINGS


async def probe(check: Callable[[], Awaitable[Any]], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await check()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.monotonic() - started) * 1000, 2)}


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
    timeout = request.app[SETTINGS].health_timeout
    postgres, redis = await asyncio.gather(
        probe(request.app[DATABASE].ping, timeout),
        probe(request.app[REDIS].ping, timeout),
    )
    if redis["status"] != "ok":
        # relay serves on without Redis (rate limits fall back to in-process
        # buckets), so an outage degrades it rather than taking it down.
        redis["status"] = "degraded"
    checks = {"postgres": postgres, "redis": redis}
    healthy = all(check["status"] in ("ok", "degraded") for check in checks.values())
    degraded = healthy and any(check["status"] != "ok" for check in checks.values())
    overall = "degraded" if degraded else "ok" if healthy else "down"
    return json_response(
        {
            "status": overall,
            "version": __version__,
            "checks": checks,
            "attestation": attestation_status(request.app),
        },
        status=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )
