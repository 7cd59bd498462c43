"""GET /health: each backend's status and round-trip time, bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay import __version__
from relay.api.body import json_response
from relay.appkeys import (
    ATTESTATION,
    DATABASE,
    IN_FLIGHT,
    RATE_LIMITER,
    REDIS,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.upstreams.health import ProviderHealth


async def probe(check: Callable[[], Awaitable[Any]], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await check()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.monotonic() - started) * 1000, 2)}


@dataclass(frozen=True, slots=True)
class ProbeRound:
    postgres: dict[str, Any]
    redis: dict[str, Any]
    upstreams: dict[str, dict[str, Any]]  # by upstream name


class SharedProbes:
    """One round of backend probes at a time, shared by every /health request that
    arrives while it runs. /health is public, and each probe takes a connection from
    the pools requests need: 1,500 callers at once took all of Redis's, which
    switched rate limiting to in-process buckets. Providers are probed only when
    their last check is stale (ProviderHealth), and never twice at once."""

    def __init__(self, providers: ProviderHealth) -> None:
        self._providers = providers
        self._round: asyncio.Future[ProbeRound] | None = None

    async def run(self, app: web.Application) -> ProbeRound:
        if self._round is None:
            self._round = asyncio.ensure_future(self._probe(app))
            self._round.add_done_callback(self._finished)
        # A caller that leaves does not cancel the round the others wait for.
        return await asyncio.shield(self._round)

    def _finished(self, _: object) -> None:
        self._round = None

    async def _probe(self, app: web.Application) -> ProbeRound:
        timeout = app[SETTINGS].health_timeout
        postgres, redis, upstreams = await asyncio.gather(
            probe(app[DATABASE].ping, timeout),
            probe(app[REDIS].ping, timeout),
            self._providers.report(app[UPSTREAM_SESSION], timeout),
        )
        return ProbeRound(postgres, redis, upstreams)


HEALTH_PROBES = web.AppKey("health_probes", SharedProbes)


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
    probed = await request.app[HEALTH_PROBES].run(request.app)
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
