"""GET /metrics: Prometheus text with request, pool and relay-specific series."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.api_calls import ADMIN, assert_error, bearer, client_with_token, post_and_never_read

METRICS_TOKEN = "metrics-token-" + "m" * 32


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(http, headers=None) -> str:
    response = await http.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/plain"
    return await response.text()


async def test_metrics_names_every_instrument(http):
    text = await scrape(http)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "relay_http_requests",
        "relay_http_request_duration_seconds",
        "relay_upstream_response_seconds",
        "relay_time_to_first_token_seconds",
        "relay_open_streams",
        "relay_tokens",
        "relay_rate_limited",
        "relay_history_commit_batch_size",
        "relay_history_commit_seconds",
        "relay_redis_errors",
        "relay_redis_up",
        "relay_postgres_pool_connections",
        "relay_postgres_pool_max_connections",
        "relay_answers",
        "relay_history_commit_failures",
        "relay_upstream_errors",
    } <= names


async def test_requests_are_counted_by_route_pattern_not_path(http):
    route = "/admin/clients/{client_id}"
    before = value(
        await scrape(http), "relay_http_requests_total", route=route, method="GET", status="404"
    )
    missing = await http.get("/admin/clients/cl_doesnotexist123", headers=ADMIN)
    await assert_error(missing, 404)
    text = await scrape(http)
    after = value(text, "relay_http_requests_total", route=route, method="GET", status="404")
    assert after == before + 1
    assert "cl_doesnotexist123" not in text
    assert value(text, "relay_http_request_duration_seconds_count", route=route) >= 1


async def test_odd_methods_share_one_label(http):
    await http.request("PROPFIND", "/health")
    text = await scrape(http)
    assert "PROPFIND" not in text
    assert value(
        text, "relay_http_requests_total", route="(unmatched)", method="OTHER", status="405"
    )


async def test_postgres_pool_gauges(make_client, make_settings):
    http = await make_client(make_settings(database_pool_size=7))
    await http.get("/health")
    text = await scrape(http)
    assert value(text, "relay_postgres_pool_max_connections") == 7
    idle = value(text, "relay_postgres_pool_connections", state="idle")
    assert idle + value(text, "relay_postgres_pool_connections", state="in_use") >= 1


async def test_a_client_that_hangs_up_is_no_server_error(make_client, make_settings, simulator):
    # aiohttp cancels the handler of a client that left: nginx's 499 when it had been
    # sent nothing, never a 500 that would page someone for a closed app.
    http = await make_client(make_settings(rate_limits=False))
    _, token = await client_with_token(http)
    simulator.config.first_byte_delay = 1.0
    body = orjson.dumps({"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]})
    route = "/v1/chat/completions"

    def counted(text: str, status: str) -> float:  # the registry is the whole session's
        return value(text, "relay_http_requests_total", route=route, method="POST", status=status)

    before = await scrape(http)
    sock = await post_and_never_read(http, route, token, body)
    await simulator.state.wait_for(lambda state: len(state.requests) >= 1, timeout=10)
    sock.close()
    for _ in range(100):
        after = await scrape(http)
        if counted(after, "499") > counted(before, "499"):
            break
        await asyncio.sleep(0.05)
    assert counted(after, "499") == counted(before, "499") + 1
    assert counted(after, "500") == counted(before, "500")


async def test_metrics_token_is_required_when_set(make_client, make_settings):
    http = await make_client(make_settings(metrics_token=METRICS_TOKEN))
    missing = await assert_error(await http.get("/metrics"), 401, "invalid_metrics_token")
    assert "RELAY_METRICS_TOKEN" in missing["message"]
    await assert_error(await http.get("/metrics", headers=bearer("wrong" + METRICS_TOKEN)), 401)
    await assert_error(await http.get("/metrics", headers=ADMIN), 401)
    assert "relay_open_streams" in await scrape(http, bearer(METRICS_TOKEN))
