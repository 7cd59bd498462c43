"""OpenAI-shaped error responses: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import orjson
from aiohttp import web

from relay.simulator.config import SimulatorConfig
from relay.simulator.headers import retry_wait

# status -> (type, code, message), as OpenAI words them for the usual failures.
_BY_STATUS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (simulated)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "not_found", "The requested resource does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "The request conflicts with another request."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


class OpenAIError(Exception):
    """An answer the simulator gives instead of a completion."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def response(self) -> web.Response:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        # The request id, the account and its rate limits: relay.simulator.headers.
        headers = {"Content-Type": "application/json"}
        # OpenAI pretty-prints error bodies (4 spaces); orjson offers 2, close enough.
        body = orjson.dumps({"error": error}, option=orjson.OPT_INDENT_2)
        return web.Response(status=self.status, body=body, headers=headers)


def simulated_error(status: int, config: SimulatorConfig) -> OpenAIError:
    """The error OpenAI would most plausibly send with `status`."""
    if status == 429:
        return rate_limited(config)
    default = _BY_STATUS[500 if status >= 500 else 400]
    type_, code, message = _BY_STATUS.get(status, default)
    return OpenAIError(status, message, type=type_, code=code)


def rate_limited(config: SimulatorConfig) -> OpenAIError:
    """OpenAI's 429, which names the organization (its headers say the rest)."""
    limit = config.requests_per_minute
    return OpenAIError(
        429,
        f"Rate limit reached in organization {config.organization} on requests per min "
        f"(RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in "
        f"{retry_wait(config)}. Visit https://platform.openai.com/account/rate-limits "
        "to learn more.",
        type="requests",
        code="rate_limit_exceeded",
    )


def out_of_quota() -> OpenAIError:
    """OpenAI's 429 for an account with no quota or credit left: waiting does not help."""
    return OpenAIError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For"
        " more information on this error, read the docs:"
        " https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )
