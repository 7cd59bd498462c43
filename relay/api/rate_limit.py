"""Rate limiting at the door: 429s before any work, and OpenAI's x-ratelimit-* headers."""

from __future__ import annotations

import math

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import CALLER, RATE_LIMIT, RATE_LIMITER
from relay.durations import go_duration
from relay.errors import NOT_RETRIED, RateLimitError
from relay.metrics import RATE_LIMITED, labelled
from relay.services.rate_verdicts import (
    ATTESTATION_REPORTS,
    TOKEN_EXCHANGES,
    Quota,
    Reservation,
    Verdict,
)
from relay.upstreams.completion import estimated_tokens

# OpenAI's SDKs wait out a wait shorter than this (openai-node: shorter; openai-python:
# up to and with it); past it they retry at once (after half a second, then one) and
# fail again, each retry drawing on the caller's buckets.
SDK_MAX_RETRY_AFTER_MS = 60_000
CHAT_ROUTES = frozenset({"create_chat_completion", "create_chat"})
# Routes without a caller, limited per client address instead, and their buckets.
ADDRESS_ROUTES = {
    "create_token": TOKEN_EXCHANGES,  # before the key is checked: no guessing at speed
    "get_attestation_report": ATTESTATION_REPORTS,  # each one asks the TEE for a quote
}


def _quota_headers(kind: str, quota: Quota) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(quota.limit),
        f"x-ratelimit-remaining-{kind}": str(quota.remaining),
        f"x-ratelimit-reset-{kind}": go_duration(quota.reset_ms),
    }


def rate_limit_headers(verdict: Verdict) -> dict[str, str]:
    headers = _quota_headers("requests", verdict.requests)
    if verdict.tokens is not None:
        headers.update(_quota_headers("tokens", verdict.tokens))
    return headers


def refusal(verdict: Verdict) -> RateLimitError:
    wait = go_duration(verdict.retry_after_ms)
    quota = verdict.tokens if verdict.refused_type == "tokens" else verdict.requests
    limit = f" (limit {quota.limit} per minute)" if quota is not None else ""
    headers = {
        "Retry-After": str(max(1, math.ceil(verdict.retry_after_ms / 1000))),
        # Read first by OpenAI's SDKs: a wait of 59.5 s is not rounded up past their limit.
        "retry-after-ms": str(max(1, verdict.retry_after_ms)),
    }
    message = f"Rate limit reached for {verdict.refused_type}{limit}. Please try again in {wait}."
    if verdict.blocked:
        # A limit of 0 never refills: OpenAI's SDKs would otherwise wait out Retry-After
        # and ask again, twice, before giving the caller the error.
        headers.update(NOT_RETRIED)
        message = (
            f"This client may use no {verdict.refused_type}{limit}: waiting will not"
            " help; ask relay's operator to raise the limit."
        )
    elif verdict.retry_after_ms >= SDK_MAX_RETRY_AFTER_MS:
        headers.update(NOT_RETRIED)  # the wait is in the message and in Retry-After
    error = RateLimitError(message, headers=headers)
    error.type = verdict.refused_type
    return error


async def _check(request: web.Request) -> Verdict | None:
    limiter = request.app[RATE_LIMITER]
    if not limiter.enabled or request.match_info.http_exception is not None:
        return None
    if request.method == "OPTIONS":
        return None
    route = request.match_info.route.name or ""
    if (bucket := ADDRESS_ROUTES.get(route)) is not None:
        forwarded = request.headers.getall("X-Forwarded-For", ())
        return await limiter.check_address(
            limiter.trusted_proxies.client_address(request.remote, forwarded), bucket
        )
    caller = request.get(CALLER)
    if caller is None:
        return None
    if route not in CHAT_ROUTES:
        return await limiter.check_client(caller.client, chat=False)
    # Known before the body is read; a chunked body (no Content-Length) reserves once
    # read (reserve_body).
    reserve = estimated_tokens(request.content_length or 0)
    return await limiter.check_client(caller.client, chat=True, reserve=reserve)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    verdict = await _check(request)
    if verdict is None:
        return await handler(request)
    request[RATE_LIMIT] = verdict
    if not verdict.allowed:
        labelled(RATE_LIMITED, verdict.refused).inc()
        raise refusal(verdict)
    if verdict.reservation is None:
        return await handler(request)
    try:
        return await handler(request)
    finally:
        # An answer settled it with its usage as it ended; a request that ended
        # without one (refused, or its client gone first) gives it back.
        request.app[RATE_LIMITER].charges.settle(request[CALLER].client, 0, verdict.reservation)


def reserve_body(request: web.Request, body: bytes) -> None:
    """A chat whose body came chunked (no Content-Length to estimate by at admission)
    reserves its estimate now it is read, as one with a Content-Length did at admission,
    and its x-ratelimit-remaining-tokens and x-ratelimit-reset-tokens count it."""
    verdict = request.get(RATE_LIMIT)
    if verdict is None or verdict.reservation is None or request.content_length is not None:
        return
    added = request.app[RATE_LIMITER].charges.reserve_more(
        request[CALLER].client, verdict.reservation, estimated_tokens(len(body))
    )
    if added and verdict.tokens is not None:
        request[RATE_LIMIT] = verdict._replace(tokens=verdict.tokens.taking(added))


def reservation_of(request: web.Request) -> Reservation | None:
    """The tokens the request's chat reserved as it was admitted, for its answer to settle."""
    verdict = request.get(RATE_LIMIT)
    return verdict.reservation if verdict is not None else None


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streams are prepared inside the handler, so headers go on here, not in the middleware.
    verdict = request.get(RATE_LIMIT)
    if verdict is not None:
        response.headers.update(rate_limit_headers(verdict))


def setup_rate_limit(app: web.Application) -> None:
    """Install after access control: client limits need the caller it identifies."""
    app.middlewares.append(rate_limit_middleware)
    app.on_response_prepare.append(_on_prepare)
