"""/health's provider probe reads GET /models to its end (bounded), so its keep-alive
connection is kept for the next probe; a 404 that no OpenAI-compatible server would
send reads as a base_url with the wrong path. The body is never shown or logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from relay.upstreams.health import (
    MAX_BODY_BYTES,
    PROBE_INTERVAL_S,
    UNKNOWN_URL,
    UNREAD_404,
    WRONG_PATH,
)
from tests.test_health import HEALTH_TIMEOUT, Clock, health, relay_for

SECRET = "org-account-4242-secret"  # what a provider's answer might name
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class CountingProvider:
    """A provider noting each request's connection (the client's address and port)."""

    connections: list[tuple[str, int]] = field(default_factory=list)


def models_list(count: int) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": f"model-{n}", "object": "model", "created": 0, "owned_by": SECRET}
                for n in range(count)
            ],
        }
    )


async def small_list(request: web.Request) -> web.StreamResponse:
    return web.Response(body=models_list(3), content_type="application/json")


@pytest.fixture
def start_provider(aiohttp_server, simulator, make_client, make_settings):
    async def start(models: Handler | None):
        """GET /v1/models answered by `models`; None: no such route (aiohttp's 404)."""
        provider = CountingProvider()

        @web.middleware
        async def note_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
            provider.connections.append(request.transport.get_extra_info("peername"))
            return await handler(request)

        app = web.Application(middlewares=[note_connection])
        if models is not None:
            app.router.add_get("/v1/models", models)
        server = await aiohttp_server(app)
        upstream = simulator.upstream(name="main", base_url=str(server.make_url("/v1")))
        clock = Clock()
        settings = make_settings(upstreams=(upstream,), health_timeout=HEALTH_TIMEOUT)
        http = await relay_for(make_client, settings, clock)
        return provider, http, clock

    return start


async def probe_twice(http, clock: Clock) -> list[dict]:
    checks = []
    for _ in range(2):
        status, body = await health(http)
        assert status == 200
        checks.append(body["upstreams"]["main"])
        clock.now += PROBE_INTERVAL_S
    return checks


async def list_in_parts(request: web.Request) -> web.StreamResponse:
    # As providers answer over TLS: the headers first, the list after, in pieces.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    body = models_list(40)
    for start in range(0, len(body), 1024):
        await asyncio.sleep(0.005)
        await response.write(body[start : start + 1024])
    await response.write_eof()
    return response


@pytest.mark.parametrize("models", [list_in_parts, small_list], ids=["in-parts", "one-piece"])
async def test_a_models_list_is_read_so_the_next_probe_reuses_the_connection(
    start_provider, models
):
    provider, http, clock = await start_provider(models)
    checks = await probe_twice(http, clock)
    assert [check["status"] for check in checks] == ["ok", "ok"]
    assert len(provider.connections) == 2
    assert provider.connections[0] == provider.connections[1]  # one connection, kept


async def test_a_models_list_past_the_cap_is_let_go_not_read_on(start_provider):
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:  # a model list with no end: relay must stop reading it
                await response.write(b" " * 16384)
                await asyncio.sleep(0)
        return response

    provider, http, clock = await start_provider(endless)
    checks = await probe_twice(http, clock)
    # Answered 200: ok, and at once, not timed out reading a body with no end.
    assert [check["status"] for check in checks] == ["ok", "ok"], checks
    assert all("error" not in check for check in checks)
    assert provider.connections[0] != provider.connections[1]  # closed, not pooled


async def test_a_body_slower_than_the_timeout_leaves_the_status_to_speak(start_provider):
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"object": "list", ')
        await asyncio.sleep(HEALTH_TIMEOUT * 4)
        return response

    _, http, _ = await start_provider(stalls)
    status, body = await health(http)
    assert status == 200
    check = body["upstreams"]["main"]
    assert check["status"] == "ok" and check["latency_ms"] < HEALTH_TIMEOUT * 1000, check


async def test_the_body_is_neither_shown_nor_logged(start_provider, caplog):
    caplog.set_level(logging.DEBUG)
    _, http, _ = await start_provider(small_list)
    response = await http.get("/health")
    assert response.status == 200
    assert SECRET not in await response.text()
    assert SECRET not in caplog.text


def answer_404(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=body, content_type=content_type)

    return handler


OPENAI_404 = orjson.dumps(
    {"error": {"message": f"Model list not kept for {SECRET}", "type": "invalid_request_error"}}
)
VLLM_404 = orjson.dumps({"object": "error", "message": "Not found", "type": "NotFoundError"})
# What OpenAI itself answers at https://api.openai.com/models (base_url without /v1).
OPENAI_INVALID_URL = orjson.dumps(
    {
        "error": {
            "message": "Invalid URL (GET /models)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
)
UNKNOWN_URL_OF_A_RELAY = orjson.dumps(
    {
        "error": {
            "message": "No such endpoint.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }
)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        # An OpenAI-compatible server at the right path that has no /models (Azure's
        # deployments, say) answers in the error shape relay's chats will get.
        (answer_404(OPENAI_404, "application/json"), "ok"),
        (answer_404(VLLM_404, "application/json"), "ok"),
        # A base_url missing its /v1: vLLM or SGLang (FastAPI), a web server, nothing.
        (answer_404(b'{"detail":"Not Found"}', "application/json"), WRONG_PATH),
        (answer_404(b"<html><body>Not Found</body></html>", "text/html"), WRONG_PATH),
        (answer_404(b"", "text/plain"), WRONG_PATH),
        (None, WRONG_PATH),  # aiohttp's own 404 page, no route at all
        # OpenAI's shape, but saying the URL itself is wrong: OpenAI's own answer, and
        # relay's (a relay as another relay's provider).
        (answer_404(OPENAI_INVALID_URL, "application/json"), UNKNOWN_URL),
        (answer_404(UNKNOWN_URL_OF_A_RELAY, "application/json"), UNKNOWN_URL),
        (
            answer_404(b'{"error": ' + b" " * MAX_BODY_BYTES + b'"x"}', "application/json"),
            UNREAD_404,
        ),
    ],
    ids=[
        "openai",
        "vllm-bare",
        "fastapi",
        "html",
        "empty",
        "no-route",
        "openai-invalid-url",
        "relay-unknown-url",
        "over-cap",
    ],
)
async def test_a_404_says_ok_only_in_an_openai_compatible_servers_words_of_no_models(
    start_provider, handler, expected
):
    _, http, _ = await start_provider(handler)
    status, body = await health(http)
    assert status == 200  # never 503 for a provider
    check = body["upstreams"]["main"]
    status_expected = "ok" if expected == "ok" else "degraded"
    assert check["status"] == status_expected, check
    assert body["status"] == status_expected
    if expected != "ok":
        assert check["error"] == expected and "404" in expected
        assert isinstance(check["latency_ms"], float | int)
    assert SECRET not in orjson.dumps(body).decode()


async def test_a_405_is_a_path_that_is_there(start_provider):
    async def not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("GET", ["POST"])

    _, http, _ = await start_provider(not_allowed)
    status, body = await health(http)
    assert (status, body["upstreams"]["main"]["status"]) == (200, "ok")
