"""Whether each provider answers relay's key: GET {base_url}/models, at most once an interval."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.sockets import registered
from relay.upstreams.config import Upstream
from relay.upstreams.provider_json import error_object, provider_json

log = logging.getLogger(__name__)

# /health is public and load balancers poll it every few seconds on every instance:
# a provider hears from an instance at most once in this long, whatever the poll rate.
PROBE_INTERVAL_S = 30.0
KEY_REFUSED = "the provider refused relay's key"
# The answer is read to its end so its keep-alive connection goes back to the pool
# for the next probe; a longer one (a list of hundreds of models) is let go, closed.
MAX_BODY_BYTES = 64 * 1024
WRONG_PATH = (
    "GET /models answered 404, not in an OpenAI-compatible server's words:"
    " is base_url's path right (it usually ends in /v1)?"
)
UNKNOWN_URL = (
    "GET /models answered 404, the server saying it has no such URL:"
    " is base_url's path right (it usually ends in /v1)?"
)
UNREAD_404 = (
    "GET /models answered 404, its body too long or too slow to read:"
    " is base_url's path right (it usually ends in /v1)?"
)
# How OpenAI-compatible servers say the URL itself is wrong, not that they list no
# models there: OpenAI ("Invalid URL (GET /models)"), relay ("unknown_url") and
# others built on their error shapes.
_UNKNOWN_URL_CODES = frozenset({"unknown_url", "invalid_url"})
_UNKNOWN_URL_WORDS = ("invalid url", "unknown url", "unknown request url")


def judge(status: int, body: bytes | None = None) -> tuple[str, str | None]:
    """What a provider's answer to GET /models says of it: (status, error). `body` is
    the answer's (None if it was not read whole); only a 404's is looked at."""
    if 200 <= status < 300 or status == 405:
        return "ok", None
    if status == 404:
        return _judge_404(body)
    if status in (401, 403):
        return "down", f"{KEY_REFUSED} (HTTP {status})"
    if status == 429:
        # Reachable, but turning relay's account away now (a rate limit or a spent
        # quota): chat requests are likely refused too, which an operator should see,
        # though no other instance or restart would fare better.
        return "degraded", "the provider is rate limiting relay (HTTP 429)"
    return "down", f"HTTP {status}"


def _judge_404(body: bytes | None) -> tuple[str, str | None]:
    """Many OpenAI-compatible servers have no /models, and say so in the error shape
    their chats use; a base_url with the wrong path meets a web server's page,
    another framework's 404, or the server's own word that the URL is unknown."""
    if body is None:
        return "degraded", UNREAD_404
    error = error_object(provider_json(body))
    if error is None:
        return "degraded", WRONG_PATH
    if _names_unknown_url(error):
        return "degraded", UNKNOWN_URL
    return "ok", None


def _names_unknown_url(error: object) -> bool:
    if not isinstance(error, dict):
        return False
    code, message = error.get("code"), error.get("message")
    if isinstance(code, str) and code.lower() in _UNKNOWN_URL_CODES:
        return True
    return isinstance(message, str) and message.lower().startswith(_UNKNOWN_URL_WORDS)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None (the connection closed) once it passes MAX_BODY_BYTES."""
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            response.close()
            return None
    return bytes(body)


@dataclass(frozen=True, slots=True)
class ProviderCheck:
    status: str  # ok, degraded or down
    checked_at: float  # on ProviderHealth's clock
    latency_ms: float | None = None
    error: str | None = None

    def report(self, now: float) -> dict[str, Any]:
        report: dict[str, Any] = {"status": self.status}
        if self.latency_ms is not None:
            report["latency_ms"] = self.latency_ms
        if self.error is not None:
            report["error"] = self.error
        # A cached result says how old it is.
        report["age_s"] = round(max(0.0, now - self.checked_at), 1)
        return report


async def probe_provider(
    session: aiohttp.ClientSession, upstream: Upstream, timeout: float
) -> tuple[str, float | None, str | None]:
    """(status, latency_ms, error) of one GET /models. The body may quote the key or
    name the account: it is read only to keep the connection and, on a 404, for its
    shape, and never logged or shown."""
    started = time.monotonic()
    answered: int | None = None
    latency: float | None = None
    body: bytes | None = None
    failure = ""
    try:
        async with asyncio.timeout(timeout):
            answer = await registered(
                lambda: session.get(
                    upstream.models_url,
                    headers=upstream.request_headers,
                    allow_redirects=False,  # a redirect would carry relay's key elsewhere
                )
            )
            async with answer as response:
                answered = response.status
                latency = round((time.monotonic() - started) * 1000, 2)
                body = await _read_capped(response)
    except Exception as exc:  # refused, DNS, TLS, timeout: named, never quoted
        # Once the status is in, a body cut or late only costs the connection.
        failure = type(exc).__name__
    if answered is None:
        return "down", None, failure
    status, error = judge(answered, body)
    return status, latency if status != "down" else None, error


class ProviderHealth:
    """Each upstream's last check, probed again once it is `interval` old.

    Callers take turns (relay.services.health.SharedProbes runs one round at a time),
    so an upstream is never probed twice at once. Nothing is probed until asked:
    a provider that is down must not keep relay from starting.
    """

    def __init__(
        self,
        upstreams: Iterable[Upstream],
        *,
        interval: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstreams = tuple(upstreams)
        self._interval = interval
        self._clock = clock
        self._last: dict[str, ProviderCheck] = {}

    async def report(
        self, session: aiohttp.ClientSession, timeout: float
    ) -> dict[str, dict[str, Any]]:
        """Upstream name → its check, probing the upstreams whose last one is stale.
        The base_url is left out: it may hold credentials or name internal hosts."""
        now = self._clock()
        due = [upstream for upstream in self._upstreams if self._stale(upstream, now)]
        results = await asyncio.gather(
            *(probe_provider(session, upstream, timeout) for upstream in due)
        )
        now = self._clock()
        for upstream, (status, latency, error) in zip(due, results, strict=True):
            self._record(upstream.name, ProviderCheck(status, now, latency, error))
        return {
            upstream.name: self._last[upstream.name].report(now) for upstream in self._upstreams
        }

    def _stale(self, upstream: Upstream, now: float) -> bool:
        last = self._last.get(upstream.name)
        return last is None or now - last.checked_at >= self._interval

    def _record(self, name: str, check: ProviderCheck) -> None:
        previous = self._last.get(name)
        self._last[name] = check
        # Logged when it changes, not on every probe: the journal hears of an outage
        # and of its end once.
        if check.status != (previous.status if previous else "ok"):
            level = logging.INFO if check.status == "ok" else logging.WARNING
            fields = {"upstream": name, "check": check.status}
            if check.error:
                fields["error"] = check.error
            log.log(level, "provider check changed", extra=fields)
