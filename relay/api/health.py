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


class SharedProbes:
    """One round of backend probes at a time, shared by every /health request that
    arrives while it runs. /health is public, and each probe takes a connection from
    the pools requests need: 1,500 callers at once took all of Redis's, which
    switched rate limiting to in-process buckets."""

    def __init__(self) -> None:
        self._round: asyncio.Future[tuple[dict[str, Any], dict[str, Any]]] | None = None

    async def run(self, app: web.Application) -> tuple[dict[str, Any], dict[str, Any]]:
        """(postgres, redis) probe results."""
        if self._round is None:
            self._round = asyncio.ensure_future(self._probe(app))
            self._round.add_done_callback(self._finished)
        # A caller that leaves does not cancel the round the others wait for.
        return await asyncio.shield(self._round)

    def _finished(self, _: object) -> None:
        self._round = None

    @staticmethod
    async def _probe(app: web.Application) -> tuple[dict[str, Any], dict[str, Any]]:
        timeout = app[SETTINGS].health_timeout
        postgres, redis = await asyncio.gather(
            probe(app[DATABASE].ping, timeout), probe(app[REDIS].ping, timeout)
        )
        return postgres, redis


HEALTH_PROBES = web.AppKey("health_probes", SharedProbes)


def setup_health(app: web.Application) -> None:
    app[HEALTH_PROBES] = SharedProbes()


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
    postgres, redis = await request.app[HEALTH_PROBES].run(request.app)
    redis = dict(redis)  # the round's result is shared: mark a copy
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
