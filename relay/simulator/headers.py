"""The headers OpenAI puts on its answers: the request's meta, the account and its rate limits.

As OpenAI documents them ("Debugging requests" in the API reference, "Rate limits in
headers" in the rate-limits guide): `openai-organization`, `openai-processing-ms`,
`openai-version`, `x-request-id` on every answer, `openai-project` beside the
organization, and `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets
written as Go durations (`6ms`, `1s`, `6m0s`). These name relay's provider account:
the simulator sends them so tests can show relay never passes them on.

One request-arrival middleware and one prepare signal stamp them on every response,
streams (prepared inside the handler) and errors alike.
"""

from __future__ import annotations

import math
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.durations import go_duration
from relay.simulator.config import SimulatorConfig
from relay.simulator.ids import request_id
from relay.simulator.keys import ARRIVED_AT, SIMULATOR_CONFIG, SPENT_TOKENS

OPENAI_VERSION = "2020-10-01"
_MINUTE_MS = 60_000


def _refill_ms(used: int, per_minute: int) -> int:
    """How long a bucket of `per_minute` takes to win back `used`: OpenAI's reset."""
    return math.ceil(used * _MINUTE_MS / per_minute) if per_minute > 0 else 0


def rate_limit_headers(config: SimulatorConfig, tokens: int) -> dict[str, str]:
    """The six headers of an account that has just spent one request and `tokens`."""
    rpm, tpm = config.requests_per_minute, config.tokens_per_minute
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-requests": str(max(rpm - 1, 0)),
        "x-ratelimit-remaining-tokens": str(max(tpm - tokens, 0)),
        "x-ratelimit-reset-requests": go_duration(_refill_ms(1, rpm)),
        "x-ratelimit-reset-tokens": go_duration(_refill_ms(tokens, tpm)),
    }


def _retry_ms(config: SimulatorConfig) -> int:
    return max(_refill_ms(1, config.requests_per_minute), 1)


def retry_wait(config: SimulatorConfig) -> str:
    """The "Please try again in …" of a 429's message, as its headers say it."""
    return go_duration(_retry_ms(config))


def exhausted_headers(config: SimulatorConfig) -> dict[str, str]:
    """A 429's headers: no request left until one refills, and when to try again."""
    wait_ms = _retry_ms(config)
    headers = rate_limit_headers(config, 0)
    headers["x-ratelimit-remaining-requests"] = "0"
    # retry-after-ms is what OpenAI's SDKs read first; retry-after is whole seconds.
    headers["retry-after-ms"] = str(wait_ms)
    headers["retry-after"] = str(math.ceil(wait_ms / 1000))
    return headers


@web.middleware
async def arrival_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[ARRIVED_AT] = time.monotonic()
    return await handler(request)


async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    arrived = request.get(ARRIVED_AT, time.monotonic())
    headers = response.headers
    headers["openai-processing-ms"] = str(int((time.monotonic() - arrived) * 1000))
    headers["openai-version"] = OPENAI_VERSION
    headers["x-request-id"] = request_id()
    tokens = request.get(SPENT_TOKENS)
    if tokens is None:
        return
    config = request.app[SIMULATOR_CONFIG]
    headers["openai-organization"] = config.organization
    headers["openai-project"] = config.project
    if response.status == 429 and not config.out_of_quota:  # a rate limit, that passes
        headers.update(exhausted_headers(config))
    else:
        headers.update(rate_limit_headers(config, tokens))


def setup_headers(app: web.Application) -> None:
    app.middlewares.append(arrival_middleware)
    app.on_response_prepare.append(stamp_headers)
