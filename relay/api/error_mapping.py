"""Every failure leaves relay in OpenAI's error shape, with the right status."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.appkeys import REQUEST_ID
from relay.errors import (
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RelayError,
    UnsupportedMediaTypeError,
    error_body,
)

log = logging.getLogger(__name__)


def error_response(error: RelayError) -> web.Response:
    return web.Response(
        body=orjson.dumps(error.body()),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


# OpenAI's APIs that relay does not serve, which some clients call by default (the
# Vercel AI SDK's `openai(model)` and LangChain's `use_responses_api` call Responses).
_OTHER_OPENAI_APIS = ("/v1/responses", "/v1/completions", "/v1/embeddings")


def _unknown_url(path: str) -> NotFoundError:
    api = next(
        (api for api in _OTHER_OPENAI_APIS if path == api or path.startswith(api + "/")), None
    )
    if api is None:
        return NotFoundError("No such endpoint.", code="unknown_url")
    return NotFoundError(
        f"No such endpoint: relay serves OpenAI's Chat Completions API "
        f"(POST /v1/chat/completions), not {api}; ask your client for chat completions.",
        code="unknown_url",
    )


def _from_http(exc: web.HTTPException, path: str) -> RelayError:
    """aiohttp's own refusals (no route, wrong method, too large) in relay's terms."""
    if isinstance(exc, web.HTTPNotFound):
        return _unknown_url(path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # Every path relay routes answers OPTIONS too (relay.api.cors): RFC 9110's
        # Allow lists all the methods the resource supports.
        allowed = ", ".join(sorted({*exc.allowed_methods, "OPTIONS"}))
        return MethodNotAllowedError(
            f"Method {exc.method} is not allowed here; use {allowed}.", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError("The request body is too large.")
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaTypeError(exc.text or "Unsupported media type.")
    error = RelayError(exc.reason, code=None)
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RelayError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 204s are answers, not errors
        return error_response(_from_http(exc, request.path))
    except Exception:
        log.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID)})
        return web.Response(
            body=orjson.dumps(error_body("Internal error.", "server_error", "internal_error")),
            status=500,
            content_type="application/json",
        )


def setup_error_mapping(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
