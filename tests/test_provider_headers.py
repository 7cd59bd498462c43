"""A client of relay sees relay's own request id and rate limits, never the headers that
name relay's provider account (organization, project, request id, the account's limits)."""

import json

import pytest

from relay.simulator import SimulatorConfig
from relay.upstreams.completion import estimated_tokens
from tests.api_calls import assert_error, bearer, client_with_token

ACCOUNT = SimulatorConfig()  # the organization and project the simulator names
PROVIDER_ONLY = ("openai-organization", "openai-project", "openai-processing-ms", "openai-version")
REQUEST_ID = "client-chosen-id.42"
# relay's own limits, none of them the simulator's (10,000 requests, 2,000,000 tokens).
CHAT_PER_MINUTE, TOKENS_PER_MINUTE = 7, 3000
ANSWERS = [
    ("/v1/chat/completions", {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat", {"message": "hi"}),
]


@pytest.fixture
async def http(make_client, make_settings):
    settings = make_settings(
        rate_limit_requests_per_minute=50,
        rate_limit_chat_per_minute=CHAT_PER_MINUTE,
        rate_limit_tokens_per_minute=TOKENS_PER_MINUTE,
    )
    return await make_client(settings)


async def ask(http, path, body, stream):
    _, token = await client_with_token(http)
    headers = {**bearer(token), "X-Request-Id": REQUEST_ID}
    return await http.post(path, json={**body, "stream": stream}, headers=headers)


def reserved(body, stream) -> int:
    """What the chat reserved of its tokens as it was admitted: its body's estimate."""
    return estimated_tokens(len(json.dumps({**body, "stream": stream})))


def assert_only_relays_own_headers(response, raw: bytes, reserved: int) -> None:
    headers = response.headers
    for name in PROVIDER_ONLY:
        assert name not in headers, name
    for name, value in headers.items():
        assert ACCOUNT.organization not in value and ACCOUNT.project not in value, name
    assert ACCOUNT.organization.encode() not in raw and ACCOUNT.project.encode() not in raw
    # The request id is relay's (the client's own, here), not the provider's req_….
    assert headers.getall("X-Request-Id") == [REQUEST_ID]
    # The limits are relay's: the tighter of requests (50) and chat requests (7), one used.
    assert headers.getall("x-ratelimit-limit-requests") == [str(CHAT_PER_MINUTE)]
    assert headers.getall("x-ratelimit-remaining-requests") == [str(CHAT_PER_MINUTE - 1)]
    assert headers.getall("x-ratelimit-limit-tokens") == [str(TOKENS_PER_MINUTE)]
    assert headers.getall("x-ratelimit-remaining-tokens") == [str(TOKENS_PER_MINUTE - reserved)]
    assert len(headers.getall("x-ratelimit-reset-tokens")) == 1
    assert len(headers.getall("x-ratelimit-reset-requests")) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("path", "body"), ANSWERS, ids=["completions", "native"])
async def test_an_answer_carries_relays_headers_not_the_provider_accounts(
    http, simulator, path, body, stream
):
    response = await ask(http, path, body, stream)
    raw = await response.read()

    assert response.status == 200, raw
    assert_only_relays_own_headers(response, raw, reserved(body, stream))
    # The simulator did send its account's headers: relay left them out.
    assert simulator.state.requests


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("path", "body"), ANSWERS, ids=["completions", "native"])
async def test_a_provider_429_passes_on_when_to_retry_and_nothing_of_the_account(
    http, simulator, path, body, stream
):
    simulator.config.error_status = 429
    simulator.config.requests_per_minute = 20  # one back every 3 s

    response = await ask(http, path, body, stream)
    raw = await response.read()

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert_only_relays_own_headers(response, raw, reserved(body, stream))
    # What _PASSED_ERROR_HEADERS allows, as the provider said it.
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == ("3", "3000")
    assert "in organization org-[redacted] on requests per min" in error["message"]
