"""GET /health reports each backend and provider with its latency, and never hangs on one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.app import create_app
from relay.appkeys import DATABASE, HEALTH_PROBES, REDIS
from relay.config import Settings
from relay.devservers import PostgresServer, RedisServer
from relay.services.health import SharedProbes
from relay.stores.database_admin import create_database
from relay.upstreams.config import Upstream
from relay.upstreams.health import KEY_REFUSED, PROBE_INTERVAL_S, ProviderHealth
from tests.conftest import Simulator


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts connections and never replies: the worst case for a probe."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


HEALTH_TIMEOUT = 0.5


async def health(http) -> tuple[int, dict[str, Any]]:
    # Bounded by RELAY_HEALTH_TIMEOUT inside relay; this outer bound only keeps
    # a regression from hanging the suite.
    async with asyncio.timeout(HEALTH_TIMEOUT + 10):
        response = await http.get("/health")
        assert response.headers["Cache-Control"] == "no-store"
        assert response.content_type == "application/json"
        return response.status, await response.json()


def assert_ok(check: dict[str, Any]) -> None:
    assert check["status"] == "ok", check
    assert isinstance(check["latency_ms"], int | float) and check["latency_ms"] >= 0


async def test_all_backends_ok(http):
    status, body = await health(http)
    assert status == 200
    assert body["status"] == "ok"
    assert isinstance(body["version"], str)
    assert_ok(body["checks"]["postgres"])
    assert_ok(body["checks"]["redis"])


async def test_health_needs_no_auth_and_answers_head(http):
    response = await http.head("/health")
    assert response.status == 200


async def test_redis_stopped_and_restarted(make_client, make_settings, tmp_path):
    with RedisServer(tmp_path / "redis") as redis_server:
        http = await make_client(
            make_settings(redis_url=redis_server.url, health_timeout=HEALTH_TIMEOUT)
        )
        status, body = await health(http)
        assert status == 200
        assert_ok(body["checks"]["redis"])

        redis_server.stop()
        status, body = await health(http)
        # Issue 2 said 503; issue 5 (relay serves on without Redis, with
        # in-process rate limits) makes a Redis outage "degraded" and 200.
        assert (status, body["status"]) == (200, "degraded"), body
        redis = body["checks"]["redis"]
        assert redis["status"] == "degraded"
        assert "latency_ms" not in redis
        assert_ok(body["checks"]["postgres"])

        redis_server.start()
        status, body = await health(http)
        assert status == 200
        assert body["status"] == "ok"
        assert_ok(body["checks"]["redis"])


async def test_postgres_stopped_is_503(make_client, make_settings, postgres_tmp_path):
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        await create_database(pg.url, "relay")
        http = await make_client(
            make_settings(database_url=pg.url_for("relay"), health_timeout=HEALTH_TIMEOUT)
        )
        status, body = await health(http)
        assert status == 200
        assert_ok(body["checks"]["postgres"])

        pg.stop()
        status, body = await health(http)
        assert status == 503
        assert body["status"] == "down"
        assert body["checks"]["postgres"]["status"] == "down"
        assert "latency_ms" not in body["checks"]["postgres"]
        assert_ok(body["checks"]["redis"])

        pg.start()  # the pool replaces its broken connections on its own
        for _ in range(100):
            status, body = await health(http)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200, body


async def test_a_pool_busy_to_the_last_connection_is_not_a_postgres_that_is_down(
    make_client, make_settings
):
    # Every pooled connection held (slow searches, commits waiting on a lock): the
    # server is up, and a load balancer must not take the instance out for it.
    http = await make_client(make_settings(database_pool_size=2, health_timeout=HEALTH_TIMEOUT))
    pool = http.app[DATABASE].pool
    held = [await pool.acquire() for _ in range(2)]
    try:
        status, body = await health(http)
        assert status == 200, body
        assert_ok(body["checks"]["postgres"])
    finally:
        for conn in held:
            await pool.release(conn)


async def test_postgres_restarted_under_a_kept_probe_connection_is_ok_at_once(
    make_client, make_settings, postgres_tmp_path
):
    # The probe's own connection outlives a restart of the server; a stale
    # connection says nothing of the server now, so it is replaced, not reported.
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        await create_database(pg.url, "relay")
        http = await make_client(
            make_settings(database_url=pg.url_for("relay"), health_timeout=HEALTH_TIMEOUT)
        )
        assert (await health(http))[0] == 200
        pg.stop()
        pg.start()
        status, body = await health(http)
        assert status == 200, body


async def test_a_redis_that_never_answers_does_not_hang_health(make_client, make_settings):
    async with black_hole() as port:
        http = await make_client(
            make_settings(redis_url=f"redis://127.0.0.1:{port}/0", health_timeout=HEALTH_TIMEOUT)
        )
        status, body = await health(http)
        assert (status, body["status"]) == (200, "degraded"), body
        assert body["checks"]["redis"]["status"] == "degraded"
        assert_ok(body["checks"]["postgres"])


async def test_concurrent_health_checks_share_one_round_of_probes(http):
    # /health is public: a crowd of callers must not empty the Redis pool.
    redis = http.app[REDIS]
    pings = 0
    ping = redis.ping

    async def counted_ping() -> object:
        nonlocal pings
        pings += 1
        await asyncio.sleep(0.05)
        return await ping()

    redis.ping = counted_ping
    try:
        answers = await asyncio.gather(*(http.get("/health") for _ in range(200)))
    finally:
        del redis.ping
    assert all(answer.status == 200 for answer in answers)
    assert pings < 20


# Upstreams: each provider is probed with GET {base_url}/models, at most once an interval.

PROVIDER_KEY = "sk-provider-secret-4242"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProvider:
    """A provider whose GET /v1/models answers `status`, counting what it hears."""

    upstream: Upstream
    status: int = 200
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # path+query, auth
    pause: float = 0.0


@pytest.fixture
def fake_provider(aiohttp_server, simulator: Simulator):
    async def start(
        status: int = 200, *, route: str = "GET", query: str = "", name: str = "main"
    ) -> FakeProvider:
        provider: FakeProvider

        async def models(request: web.Request) -> web.Response:
            provider.requests.append((request.path_qs, request.headers.get("Authorization")))
            if provider.pause:
                await asyncio.sleep(provider.pause)  # holds the round open for the crowd
            # A provider's body may quote the key: relay must not pass it on.
            return web.json_response(
                {"error": {"message": f"Incorrect API key provided: {PROVIDER_KEY}"}},
                status=provider.status,
            )

        app = web.Application()
        if route:
            app.router.add_route(route, "/v1/models", models)
        server = await aiohttp_server(app)
        upstream = simulator.upstream(
            name=name, base_url=str(server.make_url("/v1")) + query, api_key=PROVIDER_KEY
        )
        provider = FakeProvider(upstream, status)
        return provider

    return start


async def relay_for(make_client, settings: Settings, clock: Clock | None = None) -> TestClient:
    app = create_app(settings)
    if clock is not None:
        app[HEALTH_PROBES] = SharedProbes(ProviderHealth(settings.upstreams, clock=clock))
    return await make_client(settings, app)


async def test_a_provider_that_answers_is_ok_with_its_latency(http, simulator):
    status, body = await health(http)
    assert (status, body["status"]) == (200, "ok"), body
    check = body["upstreams"]["simulator"]
    assert_ok(check)
    assert isinstance(check["age_s"], int | float) and check["age_s"] >= 0
    # The base_url may hold credentials or internal hosts: the label alone is shown.
    text = orjson.dumps(body).decode()
    assert str(simulator.server.make_url("/v1")) not in text
    assert str(simulator.server.port) not in text


async def test_the_probe_asks_for_models_with_relays_key_and_keeps_the_query(
    make_client, make_settings, fake_provider
):
    provider = await fake_provider(query="?api-version=2024-06-01")
    http = await relay_for(make_client, make_settings(upstreams=(provider.upstream,)))
    assert provider.requests == []  # nothing at start-up: a provider down must not stop it
    status, body = await health(http)
    assert status == 200
    assert_ok(body["upstreams"]["main"])
    assert provider.requests == [("/v1/models?api-version=2024-06-01", f"Bearer {PROVIDER_KEY}")]


async def test_a_provider_refusing_relays_key_is_down_and_the_key_is_nowhere(
    make_client, make_settings, simulator
):
    upstream = simulator.upstream(api_key="sk-wrong-key-7777")
    http = await relay_for(make_client, make_settings(upstreams=(upstream,)))
    response = await http.get("/health")
    text = await response.text()
    assert response.status == 200
    body = orjson.loads(text)
    assert body["status"] == "degraded"
    check = body["upstreams"]["simulator"]
    assert check["status"] == "down"
    assert KEY_REFUSED in check["error"] and "401" in check["error"]
    assert "latency_ms" not in check
    assert "sk-wrong-key" not in text and "7777" not in text


@pytest.mark.parametrize(
    ("answer", "route", "expected"),
    [
        (200, "GET", "ok"),
        (404, "GET", "ok"),  # no /models, said in OpenAI's error shape: reachable
        (404, "", "degraded"),  # a 404 page of no OpenAI-compatible server: wrong path?
        (405, "POST", "ok"),
        (429, "GET", "degraded"),
        (403, "GET", "down"),
        (500, "GET", "down"),
        (502, "GET", "down"),
    ],
)
async def test_what_a_models_answer_says_of_the_provider(
    make_client, make_settings, fake_provider, answer, route, expected
):
    provider = await fake_provider(answer, route=route)
    http = await relay_for(make_client, make_settings(upstreams=(provider.upstream,)))
    response = await http.get("/health")
    text = await response.text()
    assert response.status == 200
    body = orjson.loads(text)
    check = body["upstreams"]["main"]
    assert check["status"] == expected, check
    assert body["status"] == ("ok" if expected == "ok" else "degraded")
    if expected == "down":
        assert str(answer) in check["error"]
    # Never the provider's words: its body quotes the key here.
    assert PROVIDER_KEY not in text and "Incorrect API key" not in text


async def test_an_unreachable_provider_is_down_and_relay_degraded_not_503(
    make_client, make_settings, simulator
):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    upstream = simulator.upstream(name="gone", base_url=f"http://127.0.0.1:{port}/v1")
    http = await relay_for(
        make_client, make_settings(upstreams=(upstream,), health_timeout=HEALTH_TIMEOUT)
    )
    status, body = await health(http)
    assert (status, body["status"]) == (200, "degraded"), body
    check = body["upstreams"]["gone"]
    assert check["status"] == "down"
    assert check["error"]  # a short name, e.g. ClientConnectorError
    assert str(port) not in check["error"]
    assert_ok(body["checks"]["postgres"])
    assert_ok(body["checks"]["redis"])


async def test_a_provider_that_never_answers_does_not_hang_health(
    make_client, make_settings, simulator
):
    async with black_hole() as port:
        upstream = simulator.upstream(name="hole", base_url=f"http://127.0.0.1:{port}/v1")
        http = await relay_for(
            make_client, make_settings(upstreams=(upstream,), health_timeout=HEALTH_TIMEOUT)
        )
        status, body = await health(http)
        assert (status, body["status"]) == (200, "degraded"), body
        assert body["upstreams"]["hole"] == {
            "status": "down",
            "error": "TimeoutError",
            "age_s": 0.0,
        }


async def test_concurrent_health_checks_probe_a_provider_once(
    make_client, make_settings, fake_provider
):
    provider = await fake_provider()
    provider.pause = 0.05
    http = await relay_for(make_client, make_settings(upstreams=(provider.upstream,)), Clock())
    answers = await asyncio.gather(*(http.get("/health") for _ in range(50)))
    assert all(answer.status == 200 for answer in answers)
    assert len(provider.requests) == 1


async def test_polls_within_the_interval_reuse_the_last_check_and_say_its_age(
    make_client, make_settings, fake_provider
):
    provider = await fake_provider()
    clock = Clock()
    http = await relay_for(make_client, make_settings(upstreams=(provider.upstream,)), clock)
    assert_ok((await health(http))[1]["upstreams"]["main"])
    assert len(provider.requests) == 1

    provider.status = 401  # not seen until the cached result is stale
    clock.now += PROBE_INTERVAL_S - 1
    for _ in range(5):
        check = (await health(http))[1]["upstreams"]["main"]
        assert check["status"] == "ok"
        assert check["age_s"] == PROBE_INTERVAL_S - 1
    assert len(provider.requests) == 1

    clock.now += 1
    status, body = await health(http)
    assert len(provider.requests) == 2
    assert status == 200
    assert body["upstreams"]["main"] == {
        "status": "down",
        "error": f"{KEY_REFUSED} (HTTP 401)",
        "age_s": 0.0,
    }


async def test_no_upstreams_no_probe(make_client, make_settings):
    http = await relay_for(make_client, make_settings(upstreams=()))
    status, body = await health(http)
    assert (status, body["status"], body["upstreams"]) == (200, "ok", {})


async def test_postgres_down_is_still_503_whatever_the_providers(
    make_client, make_settings, fake_provider, postgres_tmp_path
):
    provider = await fake_provider(500)
    with PostgresServer(postgres_tmp_path / "pg", fast=True) as pg:
        await create_database(pg.url, "relay")
        http = await relay_for(
            make_client,
            make_settings(
                database_url=pg.url_for("relay"),
                upstreams=(provider.upstream,),
                health_timeout=HEALTH_TIMEOUT,
            ),
        )
        pg.stop()
        status, body = await health(http)
        assert (status, body["status"]) == (503, "down"), body
        assert body["upstreams"]["main"]["status"] == "down"
