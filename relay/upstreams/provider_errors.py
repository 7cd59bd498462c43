"""A provider's refusal or failure, as the error relay's client gets: in OpenAI's
shape, in the provider's words where they are the client's to read (rewording), and
counted by kind."""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import aiohttp

from relay.errors import NOT_RETRIED, RelayError, UpstreamError, error_body
from relay.metrics import UPSTREAM_ERRORS, labelled
from relay.upstreams.provider_json import error_object, provider_json
from relay.upstreams.reply import ProviderReply
from relay.upstreams.rewording import provider_words
from relay.upstreams.routing import Route

log = logging.getLogger(__name__)

_ERROR_BODY_BYTES = 64 * 1024
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


async def _error_body(reply: ProviderReply) -> object:
    """The opening of a provider's answer that is not a completion, as JSON (None if it
    is not JSON, or does not come in time)."""
    try:
        return provider_json(await reply.prefix(_ERROR_BODY_BYTES))
    except (TimeoutError, aiohttp.ClientError):
        return None


async def refusal_error(
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


async def not_a_stream_error(
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
    # OpenAI's SDKs would ask again (502): a provider that answers a stream so (its
    # configuration, a base_url missing its /v1) does so again, and may bill each.
    # Its own error in JSON is its failure, like its 5xx: that may pass.
    return failure or UpstreamError(
        f"The provider answered a streamed request with {said}, not an event stream.",
        code="upstream_not_streamed",
        headers=dict(NOT_RETRIED),
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
