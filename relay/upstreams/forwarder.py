"""Sending a request to a provider over one shared, pooled aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from aiohttp import hdrs

from relay import __version__
from relay.errors import NOT_RETRIED, UpstreamError, UpstreamTimeoutError
from relay.metrics import UPSTREAM_ERRORS, UPSTREAM_SECONDS, labelled
from relay.sockets import registered
from relay.upstreams.provider_errors import not_a_stream_error, refusal_error
from relay.upstreams.reply import ProviderReply
from relay.upstreams.routing import Route

log = logging.getLogger(__name__)

# What is left of a provider's body once relay has what it needs (the end of a
# stream after `[DONE]`) is read for this long at most, so the connection can go
# back to the pool; a provider slower than that has its connection closed.
_END_GRACE_SECONDS = 1.0


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


def _event_stream(response: aiohttp.ClientResponse) -> bool:
    """Whether a 200 to a streamed request may be an event stream: text/event-stream
    (a charset or other parameter aside), no Content-Type at all, or text/plain, which
    some servers label their events with. Anything else (JSON, a proxy's HTML page) is not."""
    if hdrs.CONTENT_TYPE not in response.headers:
        return True
    return response.content_type in ("text/event-stream", "text/plain")


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
        # Not asked again (a 502 OpenAI's SDKs would retry): the provider answers the
        # same way again, and may bill each answer relay cannot read.
        raise UpstreamError(
            "The provider's answer could not be decoded (malformed, or in an encoding"
            " relay did not ask for).",
            code="upstream_undecodable",
            headers=dict(NOT_RETRIED),
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
            raise await refusal_error(response, reply, route)
        if stream and not _event_stream(response):
            raise await not_a_stream_error(response, reply, route)
        yield reply
        await reply.finish(_END_GRACE_SECONDS)
    finally:
        reply.release()
