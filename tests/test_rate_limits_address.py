"""Token exchanges are limited per client address, before the key is checked."""

from __future__ import annotations

from tests.api_calls import assert_error, create_client

BAD_KEY = {"api_key": "rk_0123456789abcdef_" + "ab" * 24}


async def _exchange_statuses(http, count: int, body=None, **headers: str) -> list[int]:
    statuses = []
    for _ in range(count):
        response = await http.post("/auth/token", json=body or BAD_KEY, headers=headers)
        statuses.append(response.status)
    return statuses


async def test_token_exchanges_are_limited_per_address_before_the_key_is_checked(
    make_client, make_settings
):
    http = await make_client(make_settings(rate_limit_token_exchanges_per_minute=3))
    client = await create_client(http)

    assert await _exchange_statuses(http, 3) == [401, 401, 401]
    # Even the right key is refused now: guesses and good keys share the budget.
    response = await http.post("/auth/token", json={"api_key": client["api_key"]})

    error = await assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(response.headers["Retry-After"]) <= 20
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in response.headers


async def test_successful_exchange_carries_the_address_budget(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_token_exchanges_per_minute=5))
    client = await create_client(http)

    response = await http.post("/auth/token", json={"api_key": client["api_key"]})

    assert response.status == 200
    assert response.headers["x-ratelimit-limit-requests"] == "5"
    assert response.headers["x-ratelimit-remaining-requests"] == "4"


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_token_exchanges_per_minute=2))

    statuses = [
        (
            await http.post(
                "/auth/token", json=BAD_KEY, headers={"X-Forwarded-For": f"198.51.100.{n}"}
            )
        ).status
        for n in range(4)
    ]

    # Every request counts against 127.0.0.1, whatever address it claims.
    assert statuses == [401, 401, 429, 429]


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(make_client, make_settings):
    http = await make_client(
        make_settings(rate_limit_token_exchanges_per_minute=2, trusted_proxies=("127.0.0.0/8",))
    )

    first = await _exchange_statuses(http, 3, **{"X-Forwarded-For": "198.51.100.1"})
    second = await _exchange_statuses(http, 3, **{"X-Forwarded-For": "198.51.100.2"})

    assert first == [401, 401, 429]
    assert second == [401, 401, 429]  # another client behind the same proxy: its own budget


async def test_an_ipv6_caller_is_limited_by_its_64_not_each_address(make_client, make_settings):
    http = await make_client(
        make_settings(rate_limit_token_exchanges_per_minute=2, trusted_proxies=("127.0.0.0/8",))
    )

    hopping = [
        (
            await http.post(
                "/auth/token", json=BAD_KEY, headers={"X-Forwarded-For": f"2001:db8:1:2::{n:x}"}
            )
        ).status
        for n in range(1, 5)
    ]
    neighbour = await _exchange_statuses(http, 1, **{"X-Forwarded-For": "2001:db8:1:3::1"})

    assert hopping == [401, 401, 429, 429]  # one /64, one budget, however many addresses
    assert neighbour == [401]  # the next /64 is someone else


async def test_a_client_cannot_escape_by_prepending_to_forwarded_for(make_client, make_settings):
    http = await make_client(
        make_settings(
            rate_limit_token_exchanges_per_minute=2, trusted_proxies=("127.0.0.0/8", "10.0.0.0/8")
        )
    )

    statuses = [
        (
            await http.post(
                "/auth/token",
                json=BAD_KEY,
                # The proxy appended the real address; what is left of it the client wrote.
                headers={"X-Forwarded-For": f"192.0.2.{n}, 203.0.113.9, 10.1.2.3"},
            )
        ).status
        for n in range(4)
    ]

    assert statuses == [401, 401, 429, 429]


async def test_v1_limits_are_per_client_not_per_address(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_token_exchanges_per_minute=7))
    client = await create_client(http)

    response = await http.post("/auth/token", json={"api_key": client["api_key"]})
    token = (await response.json())["access_token"]
    me = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert me.headers["x-ratelimit-limit-requests"] == "100"
    assert me.headers["x-ratelimit-remaining-requests"] == "99"


async def test_attestation_reports_are_limited_per_address(make_client, make_settings):
    http = await make_client(
        make_settings(
            rate_limit_attestation_reports_per_minute=2, rate_limit_token_exchanges_per_minute=5
        )
    )

    first = await http.get("/v1/attestation/report")
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert (await http.get("/v1/attestation/report", params={"nonce": "ab" * 32})).status == 200
    # Each report asks the TEE for a quote: a third within the minute is refused.
    refused = await http.get("/v1/attestation/report", params={"nonce": "cd" * 32})

    error = await assert_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    # A budget of its own: token exchanges from the same address still go through.
    assert (await http.post("/auth/token", json=BAD_KEY)).status == 401
