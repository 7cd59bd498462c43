"""Backend probes for /health: one shared round at a time, each probe bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.upstreams.health import ProviderHealth

Check = Callable[[], Awaitable[Any]]


async def probe(check: Check, timeout: float) -> dict[str, Any]:
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

    async def run(
        self,
        postgres: Check,
        redis: Check,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> ProbeRound:
        """The running round, or a new one probing these backends (a joiner's are unused)."""
        if self._round is None:
            checks = (
                probe(postgres, timeout),
                probe(redis, timeout),
                self._providers.report(session, timeout),
            )
            self._round = asyncio.ensure_future(_gather_round(*checks))
            self._round.add_done_callback(self._finished)
        # A caller that leaves does not cancel the round the others wait for.
        return await asyncio.shield(self._round)

    def _finished(self, _: object) -> None:
        self._round = None


async def _gather_round(
    postgres: Awaitable[dict[str, Any]],
    redis: Awaitable[dict[str, Any]],
    upstreams: Awaitable[dict[str, dict[str, Any]]],
) -> ProbeRound:
    return ProbeRound(*await asyncio.gather(postgres, redis, upstreams))
