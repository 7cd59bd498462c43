"""Sending a request to a provider over one shared, pooled aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import aiohttp
import orjson
from aiohttp import hdrs

from relay import __version__
from relay.errors import NOT_RETRIED, RelayError, UpstreamError, UpstreamTimeoutError, error_body
from relay.metrics import UPSTREAM_ERRORS, UPSTREAM_SECONDS, labelled
from relay.sockets import registered
from relay.upstreams.provider_json import error_object, provider_json
from relay.upstreams.reply import ProviderReply
from relay.upstreams.rewording import provider_words
from relay.upstreams.routing import Route

log = logging.getLogger(__name__)

_ERROR_BODY_BYTES = 64 * 1024
# What is left of a provider's body once relay has what it needs (the end of a
# stream after `[DONE]`) is read for this long at most, so the connection can go
# back to the pool; a provider slower than that has its connection closed.
_END_GRACE_SECONDS = 1.0
# Headers of a provider refusal worth passing on to the client.
_PASSED_ERROR_HEADERS = ("Retry-After", "retry-after-ms", "x-should-retry")


class ProviderRefusalError(RelayError):
    """A provider's 4xx, passed through in OpenAI's shape with the provider's status."""

    def __init__(
        self, status: int, body: dict[str, object], headers: dict[str, str], route: Route
    ) -> None:
        error = body["error"]
        assert isinstance(error, dict)
        message = str(error.get("message") or "The provider refused the request.")
        super().__init__(provider_words(message, route))
        self.status = status
        # Only these four fields reach the client, each in provider_words.
        self.type = provider_words(str(error.get("type") or "invalid_request_error"), route)
        code, param = error.get("code"), error.get("param")
        self.code = provider_words(code, route) if isinstance(code, str) else None
        self.param = provider_words(param, route) if isinstance(param, str) else None
        self.headers = headers


def create_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # relay's own limits bound concurrency; the pool must not queue streams
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"relay/{__version__}"},
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        # Redirects would resend the body elsewhere; a provider should not need them.
        raise_for_status=False,
    )


async def _error_body(reply: ProviderReply) -> object:
    """The opening of a provider's answer that is not a completion, as JSON (None if it
    is not JSON, or does not come in time)."""
    try:
        return provider_json(await reply.prefix(_ERROR_BODY_BYTES))
    except (TimeoutError, aiohttp.ClientError):
        return None


async def _refusal(
    response: aiohttp.ClientResponse, reply: ProviderReply, route: Route
) -> RelayError:
    """Turn a provider's non-200 answer into the error relay gives its client."""
    upstream = route.upstream
    body = await _error_body(reply)
    status = response.status
    refused = _refused_relay(status, error_object(body), route)
    # A refusal of relay's own account or configuration is the operator's to fix.
    log.log(
        logging.WARNING if refused else logging.INFO,
        "provider refused",
        extra={"upstream": upstream.name, "upstream_status": status},
    )
    kind = refused.kind if refused else f"status_{min(max(status // 100, 1), 5)}xx"
    labelled(UPSTREAM_ERRORS, upstream.name, kind).inc()
    if refused:
        # Not the client's doing, nor will asking again help (the SDKs would, at a 502).
        return UpstreamError(refused.message, code=refused.code, headers=dict(NOT_RETRIED))
    # When to ask again, as the provider said it: OpenAI's SDKs read these on every
    # status they retry (429 and 5xx among them), relay's 502 included.
    headers = {
        name: response.headers[name] for name in _PASSED_ERROR_HEADERS if name in response.headers
    }
    if 400 <= status < 500:
        error = error_object(body)
        passed: dict[str, object]
        if isinstance(error, dict):
            passed = {"error": error}
        elif isinstance(error, str) and error:  # some providers answer {"error": "…"}
            passed = error_body(error, "invalid_request_error")
        else:
            reason = response.reason or "error"
            passed = error_body(
                f"The provider answered {status} {reason}.", "invalid_request_error"
            )
        return ProviderRefusalError(status, passed, headers, route)
    return UpstreamError(
        f"The provider failed with status {status}.", code="upstream_error", headers=headers
    )


class _RelayRefused(NamedTuple):
    kind: str  # relay_upstream_errors_total's
    code: str
    message: str


def _refused_relay(status: int, error: object, route: Route) -> _RelayRefused | None:
    """A refusal of relay itself rather than of the client's request, in the provider's
    words where they help: its credentials (401), its access (403: a region, a model
    its project may not use), its account's credit (a 402 Payment Required, as
    DeepSeek, OpenRouter and Together send; OpenAI's 429 `insufficient_quota`, which is
    no rate limit that passes), or its configuration (a 404: a model id the provider
    does not have, or a base_url whose path is wrong: the client asked for a model
    relay lists). None for anything else."""
    said = error.get("message") if isinstance(error, dict) else error
    words = provider_words(said, route) if isinstance(said, str) and said else ""
    if status == 401:
        return _RelayRefused("auth", "upstream_auth", "The provider rejected relay's credentials.")
    if status == 403:
        message = f"The provider refused relay access: {words}" if words else ""
        return _RelayRefused(
            "auth", "upstream_auth", message or "The provider refused relay access."
        )
    quota = isinstance(error, dict) and "insufficient_quota" in (
        error.get("code"),
        error.get("type"),
    )
    if status == 402 or (status == 429 and quota):
        return _RelayRefused(
            "quota",
            "upstream_quota",
            "The provider refused relay: its account there is out of quota or credit.",
        )
    if status == 404:
        message = "The provider has no such model or endpoint"
        return _RelayRefused(
            "not_found", "upstream_not_found", f"{message}: {words}" if words else message + "."
        )
    return None


def _event_stream(response: aiohttp.ClientResponse) -> bool:
    """Whether a 200 to a streamed request may be an event stream: text/event-stream
    (a charset or other parameter aside), no Content-Type at all, or text/plain, which
    some servers label their events with. Anything else (JSON, a proxy's HTML page) is not."""
    if hdrs.CONTENT_TYPE not in response.headers:
        return True
    return response.content_type in ("text/event-stream", "text/plain")


async def _not_a_stream(
    response: aiohttp.ClientResponse, reply: ProviderReply, route: Route
) -> RelayError:
    """A streamed request answered 200 with something else than an event stream: a JSON
    error, a whole answer the client did not ask for, a proxy's error page. Either way
    the client cannot read it as a stream."""
    body = await _error_body(reply)
    kind = response.content_type
    labelled(UPSTREAM_ERRORS, route.upstream.name, "not_streamed").inc()
    log.info(
        "provider answered a stream without an event stream",
        extra={"upstream": route.upstream.name, "content_type": kind},
    )
    failure = provider_failure(error_object(body), route)
    # The type is named, when it is a plain one, so the operator sees what came instead.
    said = kind if _MEDIA_TYPE.fullmatch(kind) else "something else"
    return failure or UpstreamError(
        f"The provider answered a streamed request with {said}, not an event stream.",
        code="upstream_not_streamed",
    )


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+-]{0,60}")


def provider_failure(error: object, route: Route) -> UpstreamError | None:
    """The provider's own error object, as relay's client may read it; None if it says
    nothing (no message)."""
    if isinstance(error, dict) and isinstance(message := error.get("message"), str) and message:
        return UpstreamError(
            f"The provider failed: {provider_words(message, route)}", code="upstream_error"
        )
    return None


@asynccontextmanager
async def open_provider_response(
    session: aiohttp.ClientSession,
    route: Route,
    body: bytes,
    *,
    stream: bool,
    longest: float,
) -> AsyncIterator[ProviderReply]:
    """POST `body` to the route's provider; yield its 200 reply, raise a RelayError otherwise
    (also when a `stream` request is answered with JSON instead of an event stream).

    The provider has the upstream's `timeout_s` to answer with headers, then as
    long again for each wait between bytes of the body. Leaving the block
    releases the response: a connection read to the end goes back to the
    keep-alive pool; one not read to the end is closed, which is how the
    provider learns the client has gone.
    """
    upstream = route.upstream
    sent = time.monotonic()
    try:
        async with asyncio.timeout(upstream.timeout_s):
            response = await registered(
                lambda: session.post(
                    upstream.chat_completions_url,
                    data=body,
                    headers=upstream.request_headers,
                    timeout=upstream.client_timeout,
                    allow_redirects=False,
                )
            )
    except (TimeoutError, aiohttp.ServerTimeoutError):
        labelled(UPSTREAM_ERRORS, upstream.name, "timeout").inc()
        raise UpstreamTimeoutError("The provider did not answer in time.") from None
    except (aiohttp.ClientConnectorError, RuntimeError) as exc:  # RuntimeError: see registered
        labelled(UPSTREAM_ERRORS, upstream.name, "unreachable").inc()
        log.warning(
            "provider unreachable", extra={"upstream": upstream.name, "error": type(exc).__name__}
        )
        raise UpstreamError(
            "The provider could not be reached.", code="upstream_unreachable"
        ) from None
    except aiohttp.ClientResponseError as exc:
        # An answer came, but aiohttp could not read it: its headers are malformed, or
        # its body is in an encoding relay did not ask for (br: relay asks gzip, deflate).
        labelled(UPSTREAM_ERRORS, upstream.name, "undecodable").inc()
        log.warning(
            "provider answer undecodable",
            extra={"upstream": upstream.name, "error": type(exc).__name__},
        )
        raise UpstreamError(
            "The provider's answer could not be decoded (malformed, or in an encoding"
            " relay did not ask for).",
            code="upstream_undecodable",
        ) from None
    except aiohttp.ClientError as exc:
        # Connected, then the connection failed before an answer's headers: the provider
        # may have taken the request (and may bill it), so not "could not be reached".
        labelled(UPSTREAM_ERRORS, upstream.name, "closed").inc()
        log.warning(
            "provider closed the connection",
            extra={"upstream": upstream.name, "error": type(exc).__name__},
        )
        raise UpstreamError(
            "The provider closed the connection without answering.", code="upstream_closed"
        ) from None
    labelled(UPSTREAM_SECONDS, upstream.name, route.model).observe(time.monotonic() - sent)
    reply = ProviderReply(response, upstream.timeout_s, longest)
    try:
        if response.status != 200:
            raise await _refusal(response, reply, route)
        if stream and not _event_stream(response):
            raise await _not_a_stream(response, reply, route)
        yield reply
        await reply.finish(_END_GRACE_SECONDS)
    finally:
        reply.release()
