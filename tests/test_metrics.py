"""GET /metrics: Prometheus text with request, pool and relay-specific series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api_calls import ADMIN, assert_error, bearer

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
        "relay_postgres_pool_connections",
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
    assert value(text, "relay_postgres_pool_connections", state="max") == 7
    assert value(text, "relay_postgres_pool_connections", state="open") >= 1


async def test_metrics_token_is_required_when_set(make_client, make_settings):
    http = await make_client(make_settings(metrics_token=METRICS_TOKEN))
    missing = await assert_error(await http.get("/metrics"), 401, "invalid_metrics_token")
    assert "RELAY_METRICS_TOKEN" in missing["message"]
    await assert_error(await http.get("/metrics", headers=bearer("wrong" + METRICS_TOKEN)), 401)
    await assert_error(await http.get("/metrics", headers=ADMIN), 401)
    assert "relay_open_streams" in await scrape(http, bearer(METRICS_TOKEN))
