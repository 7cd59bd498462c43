"""Clients are held to their limits exactly, across instances, and see OpenAI's headers."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest
import redis.asyncio as redis

from relay.api.rate_limit import refusal
from relay.appkeys import CLIENTS, RATE_LIMITER
from relay.services.rate_verdicts import Quota, Verdict
from relay.upstreams.completion import estimated_tokens
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token
from tests.rate_limit_calls import UNSERVED_CHAT, token_gate, token_refusal

# What a token gate's chat reserves: aiohttp sends `json=` as json.dumps writes it.
UNSERVED_RESERVE = estimated_tokens(len(json.dumps(UNSERVED_CHAT)))
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
REQUEST_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


async def _burst(http, count: int, path: str = "/v1/me", **kwargs) -> list[int]:
    responses = await asyncio.gather(*(http.get(path, **kwargs) for _ in range(count)))
    for response in responses:
        await response.read()
    return [response.status for response in responses]


def _refilled(per_minute: int, started: float) -> int:
    """Requests a bucket of `per_minute` can have regained since loop time `started`: on
    a busy machine a burst can outlast a refill, and the request it allows is due."""
    return int((asyncio.get_running_loop().time() - started) * per_minute / 60)


async def test_exactly_the_limit_of_200_concurrent_requests_pass(make_client, make_settings):
    # 25 a minute refills one every 2.4 s: longer than the burst takes on a quiet machine.
    http = await make_client(make_settings(rate_limit_requests_per_minute=25))
    _, token = await client_with_token(http)

    started = asyncio.get_running_loop().time()
    statuses = await _burst(http, 200, headers=bearer(token))

    assert 25 <= statuses.count(200) <= 25 + _refilled(25, started)
    assert statuses.count(429) == 200 - statuses.count(200)


# Both instances run in the test's one process: under a burst, a Redis reply can wait
# on the busy loop past the 0.25 s that would take Redis for down (and fall back to
# each instance's own limits). The shared bucket is what these tests are about.
PATIENT_REDIS = 5.0


async def test_two_instances_enforce_one_combined_limit(make_client, make_settings):
    settings = make_settings(rate_limit_requests_per_minute=30, redis_timeout=PATIENT_REDIS)
    first, second = await make_client(settings), await make_client(settings)
    _, token = await client_with_token(first)

    # Twenty on one instance, then twenty on the other: the second sees what is left.
    started = asyncio.get_running_loop().time()
    assert (await _burst(first, 20, headers=bearer(token))).count(200) == 20
    passed = (await _burst(second, 20, headers=bearer(token))).count(200)
    assert 10 <= passed <= 10 + _refilled(30, started)


async def test_two_instances_hit_at_once_pass_exactly_the_limit(make_client, make_settings):
    settings = make_settings(rate_limit_requests_per_minute=30, redis_timeout=PATIENT_REDIS)
    first, second = await make_client(settings), await make_client(settings)
    _, token = await client_with_token(first)

    started = asyncio.get_running_loop().time()
    statuses = await asyncio.gather(
        _burst(first, 100, headers=bearer(token)), _burst(second, 100, headers=bearer(token))
    )

    assert 30 <= statuses[0].count(200) + statuses[1].count(200) <= 30 + _refilled(30, started)


async def test_clients_have_separate_buckets(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_requests_per_minute=3))
    _, first = await client_with_token(http, name="first")
    _, second = await client_with_token(http, name="second")

    assert sorted(await _burst(http, 4, headers=bearer(first))) == [200, 200, 200, 429]
    assert (await http.get("/v1/me", headers=bearer(second))).status == 200


async def test_refusal_is_429_with_retry_after_and_openai_error(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_requests_per_minute=2))
    _, token = await client_with_token(http)
    await _burst(http, 2, headers=bearer(token))

    response = await http.get("/v1/me", headers=bearer(token))

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert "requests" in error["message"]
    # 2 a minute: the next one is back in 30 s (less the time the test took).
    assert 25 <= int(response.headers["Retry-After"]) <= 30
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["X-Request-Id"]


async def test_every_limited_response_carries_well_formed_headers(make_client, make_settings):
    http = await make_client(
        make_settings(rate_limit_requests_per_minute=10, rate_limit_tokens_per_minute=5000)
    )
    _, token = await client_with_token(http)

    remaining = []
    for _ in range(2):
        response = await http.get("/v1/me", headers=bearer(token))
        assert response.status == 200
        for name in REQUEST_HEADERS:
            assert name in response.headers, name
        # Only a chat spends tokens: no other call is limited by them, or says so.
        for name in TOKEN_HEADERS:
            assert name not in response.headers, name
        assert DURATION.match(response.headers["x-ratelimit-reset-requests"])
        assert response.headers["x-ratelimit-limit-requests"] == "10"
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    response = await token_gate(http, token)
    for name in REQUEST_HEADERS + TOKEN_HEADERS:
        assert name in response.headers, name
    assert DURATION.match(response.headers["x-ratelimit-reset-tokens"])
    assert response.headers["x-ratelimit-limit-tokens"] == "5000"
    # What is left once the chat's estimate (its body, 4 bytes a token) is reserved.
    assert response.headers["x-ratelimit-remaining-tokens"] == str(5000 - UNSERVED_RESERVE)
    assert response.headers["x-ratelimit-reset-tokens"].endswith("ms")  # 12 ms a token
    remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))

    assert remaining == [9, 8, 7]
    # Three taken at 10 a minute come back in 18 s (6 s each), less the test's own time.
    reset = response.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 17 <= float(reset.removesuffix("s")) <= 18


async def test_unlimited_routes_carry_no_rate_limit_headers(http):
    response = await http.get("/health")
    assert "x-ratelimit-limit-requests" not in response.headers
    response = await http.get("/admin/clients", headers=ADMIN)
    assert response.status == 200
    assert "x-ratelimit-limit-requests" not in response.headers


async def test_a_large_answer_empties_the_token_bucket(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_tokens_per_minute=1000))
    client, token = await client_with_token(http)
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200

    # What the chat relay does once an answer is out: debit its real usage.
    row = await http.app[CLIENTS].get(client["id"])
    # Not waited for: the next check follows it.
    http.app[RATE_LIMITER].charges.settle(row, 1500, None)

    response = await token_gate(http, token)
    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens"
    assert response.headers["x-ratelimit-limit-tokens"] == "1000"
    assert response.headers["x-ratelimit-remaining-tokens"] == "0"
    # 500 tokens in debt at 1000 a minute: 30 s until the bucket is back at zero.
    assert 28 <= int(response.headers["Retry-After"]) <= 30
    assert "x-should-retry" not in response.headers  # a retry then is welcome


async def test_a_wait_longer_than_the_sdks_wait_out_is_not_retried(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_tokens_per_minute=10))
    client, token = await client_with_token(http)
    row = await http.app[CLIENTS].get(client["id"])
    http.app[RATE_LIMITER].charges.settle(row, 59, None)  # 49 in debt: back at zero in 4m54s

    response = await token_gate(http, token)

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert 290 <= int(response.headers["Retry-After"]) <= 294
    # OpenAI's SDKs ignore a Retry-After over 60 s and would ask again at once, twice.
    assert response.headers["x-should-retry"] == "false"
    assert "try again in 4m5" in error["message"]


@pytest.mark.parametrize(
    ("wait_ms", "retried"),
    [(1_000, True), (59_500, True), (59_999, True), (60_000, False), (354_000, False)],
)
def test_a_refusal_says_its_wait_to_the_millisecond_and_past_a_minute_not_to_retry(
    wait_ms, retried
):
    # openai-node waits out less than 60 s (and reads retry-after-ms first): "Retry-After:
    # 60" for 59.5 s would be ignored, and retried at once.
    quota = Quota(limit=10, remaining=0, reset_ms=wait_ms)
    error = refusal(Verdict(quota, None, refused="requests", retry_after_ms=wait_ms))
    assert error.headers["retry-after-ms"] == str(wait_ms)
    assert error.headers["Retry-After"] == str(-(-wait_ms // 1000))
    assert ("x-should-retry" not in error.headers) is retried


async def test_a_debit_within_the_budget_only_lowers_remaining_tokens(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_tokens_per_minute=1000))
    client, token = await client_with_token(http)
    row = await http.app[CLIENTS].get(client["id"])

    http.app[RATE_LIMITER].charges.settle(row, 400, None)
    http.app[RATE_LIMITER].charges.settle(row, 0, None)  # nothing to charge

    response = await token_gate(http, token)
    await assert_error(response, 404, "model_not_found")  # past the token gate
    left = 600 - UNSERVED_RESERVE  # and its own estimate reserved
    assert int(response.headers["x-ratelimit-remaining-tokens"]) in (left, left + 1)
    assert DURATION.match(response.headers["x-ratelimit-reset-tokens"])


async def test_chat_requests_draw_on_the_chat_bucket_too(make_client, make_settings, simulator):
    http = await make_client(make_settings(rate_limit_chat_per_minute=2))
    _, token = await client_with_token(http)
    chat = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
        assert response.status != 429, await response.text()
        assert response.headers["x-ratelimit-limit-requests"] == "2"
    forwarded = len(simulator.state.requests)

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert len(simulator.state.requests) == forwarded  # nothing went upstream
    # The general bucket (100 a minute) still has room for other endpoints.
    response = await http.get("/v1/me", headers=bearer(token))
    assert response.status == 200
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    # Two chats and this one: the refused chat charged no bucket at all.
    assert response.headers["x-ratelimit-remaining-requests"] == "97"


async def test_a_client_override_takes_effect(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_requests_per_minute=100))
    client, token = await client_with_token(http)
    assert (await http.get("/v1/me", headers=bearer(token))).headers[
        "x-ratelimit-limit-requests"
    ] == "100"

    response = await http.patch(
        f"/admin/clients/{client['id']}",
        json={"limits": {"requests_per_minute": 3, "tokens_per_minute": 50}},
        headers=ADMIN,
    )
    assert response.status == 200, await response.text()

    # The cache learns of the change by NOTIFY; give it a moment to arrive.
    for _ in range(50):
        response = await http.get("/v1/me", headers=bearer(token))
        if response.headers["x-ratelimit-limit-requests"] == "3":
            break
        await asyncio.sleep(0.05)
    statuses = [response.status] + await _burst(http, 5, headers=bearer(token))
    assert statuses.count(200) == 3
    response = await token_gate(http, token)
    assert response.headers["x-ratelimit-limit-tokens"] == "50"


async def test_a_zero_override_refuses_everything(make_client, make_settings):
    http = await make_client(make_settings())
    _, token = await client_with_token(http, limits={"requests_per_minute": 0})

    response = await http.get("/v1/me", headers=bearer(token))

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert response.headers["Retry-After"] == "60"
    # Waiting never helps: the OpenAI SDKs are told not to retry, and people are too.
    assert response.headers["x-should-retry"] == "false"
    assert "try again" not in error["message"] and "waiting will not help" in error["message"]


async def test_limits_off_lets_everything_through_without_headers(make_client, make_settings):
    http = await make_client(make_settings(rate_limits=False, rate_limit_requests_per_minute=2))
    _, token = await client_with_token(http)

    statuses = await _burst(http, 10, headers=bearer(token))

    assert statuses == [200] * 10
    response = await http.get("/v1/me", headers=bearer(token))
    assert "x-ratelimit-limit-requests" not in response.headers
    row = await http.app[CLIENTS].get((await response.json())["id"])
    http.app[RATE_LIMITER].charges.settle(row, 10**9, None)  # a no-op, not an error
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200


async def test_redis_holds_no_raw_client_id(make_client, make_settings, redis_url):
    http = await make_client(make_settings(rate_limit_tokens_per_minute=1000))
    client, token = await client_with_token(http)
    await _burst(http, 3, headers=bearer(token))
    http.app[RATE_LIMITER].charges.settle(await http.app[CLIENTS].get(client["id"]), 10, None)
    await _burst(http, 1, headers=bearer(token))  # answered after the debit reached Redis

    async with redis.from_url(redis_url) as connection:
        # This relay's charge mark (the number of its last charge taken) aside.
        [mark] = await connection.keys("relay:rl:{charges}:*")
        mark_ttl = await connection.pttl(mark)
        keys = [key.decode() for key in await connection.keys("*") if key != mark]
        ttls = [await connection.pttl(key) for key in keys]
        dumped = [str(await connection.hgetall(key)) for key in keys]

    assert 0 < mark_ttl <= 86_400_000  # a day: the longest a debt takes to refill
    assert keys, "the buckets live in Redis"
    for text in [*keys, mark.decode(), *dumped]:
        assert client["id"] not in text
        assert client["id"].replace("-", "") not in text
        assert client["key_id"] not in text
        assert "127.0.0.1" not in text  # the token-exchange bucket's address is hashed too
    assert all(0 < ttl <= 61_000 for ttl in ttls), ttls  # idle clients vanish


async def test_a_streamed_answer_carries_the_headers(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_chat_per_minute=5))
    _, token = await client_with_token(http)
    chat = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))

    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-limit-requests"] == "5"
    assert response.headers["x-ratelimit-remaining-requests"] == "4"
    for name in TOKEN_HEADERS:
        assert name in response.headers
    assert (await response.read()).endswith(b"data: [DONE]\n\n")


async def test_answers_the_provider_refused_or_never_gave_spend_no_tokens(
    make_client, make_settings, simulator
):
    # Nothing was generated: no charge, or an outage (and the SDK's own retries of
    # each 502) would lock clients out once the provider is back.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead = simulator.upstream(
            name="dead",
            base_url=f"http://127.0.0.1:{held.getsockname()[1]}/v1",
            models={"gpt-dead": "gpt-dead"},
        )
        settings = make_settings(
            rate_limit_tokens_per_minute=50, upstreams=(simulator.upstream(), dead)
        )
        http = await make_client(settings)
        _, token = await client_with_token(http)
        long = [{"role": "user", "content": "x" * 2000}]  # ~500 tokens if it were charged
        simulator.config.error_status = 400
        for model, status in (("gpt-dead", 502), ("gpt-sim", 400), ("gpt-dead", 502)):
            chat = {"model": model, "messages": long}
            response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
            assert response.status == status, await response.text()
        await asyncio.sleep(0.1)  # debits follow their answers
        response = await token_gate(http, token)
        await assert_error(response, 404, "model_not_found")
        # Each reservation was given back: only the gate's own is out.
        assert int(response.headers["x-ratelimit-remaining-tokens"]) == 50 - UNSERVED_RESERVE


async def test_real_answers_spend_the_token_budget(make_client, make_settings):
    settings = make_settings(rate_limit_tokens_per_minute=5, rate_limit_chat_per_minute=100)
    http = await make_client(settings)
    _, token = await client_with_token(http)
    chat = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hello there"}]}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    assert response.status == 200, await response.text()
    used = (await response.json())["usage"]["total_tokens"]
    assert used > 5

    await token_refusal(http, token)  # the next chat finds the bucket in debt
