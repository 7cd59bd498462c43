"""Security headers on every answer (also on what aiohttp cannot parse), and CORS only
for the configured origins."""

from __future__ import annotations

import gzip

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from relay.api.cors import setup_cors
from relay.api.refusals import unparsed_error
from relay.api.security_headers import setup_security_headers
from relay.appkeys import SETTINGS
from relay.config import Settings
from tests.api_calls import assert_error, client_with_token, raw_exchange

APP_ORIGIN = "https://app.example.com"


def assert_security_headers(response, hsts: bool = False) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Server"] == "relay"  # no software names or versions
    assert ("Strict-Transport-Security" in response.headers) is hsts


async def test_security_headers_on_answers_and_errors(http):
    assert_security_headers(await http.get("/health"))
    assert_security_headers(await http.get("/no/such/route"))
    assert_security_headers(await http.get("/v1/me"))
    assert_security_headers(await http.delete("/health"))


async def test_hsts_only_when_https_is_forced(make_client, make_settings):
    http = await make_client(make_settings(force_https=True))
    response = await http.get("/health")
    assert_security_headers(response, hsts=True)
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert_security_headers(await http.get("/v1/me"), hsts=True)


async def test_security_headers_on_a_stream(aiohttp_client):
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app[SETTINGS] = Settings(force_https=True, cors_origins=(APP_ORIGIN,))
    setup_security_headers(app)
    setup_cors(app)
    app.router.add_post("/stream", stream)
    http = await aiohttp_client(app)
    response = await http.post("/stream", headers={"Origin": APP_ORIGIN})
    assert await response.read() == b"data: [DONE]\n\n"
    assert_security_headers(response, hsts=True)
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


async def test_no_cors_headers_unless_configured(http):
    response = await http.get("/health", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await http.options(
        "/v1/me", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_cors_for_a_configured_origin(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN + "/",)))
    response = await http.get("/health", headers={"Origin": APP_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in response.headers["Vary"]
    exposed = {
        name.strip().lower()
        for name in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"x-request-id", "x-receipt-id", "relay-conversation-id"} <= exposed
    # What OpenAI's SDKs decide retries by: a browser script sees only what is exposed.
    assert {"retry-after", "retry-after-ms", "x-should-retry", "www-authenticate"} <= exposed
    assert "x-ratelimit-remaining-requests" in exposed
    # Errors carry CORS too, or a browser could not read why it was refused.
    error = await http.get("/v1/me", headers={"Origin": APP_ORIGIN})
    await assert_error(error, 401)
    assert error.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        (APP_ORIGIN + ":443", APP_ORIGIN),
        ("HTTP://127.0.0.1:80/", "http://127.0.0.1"),
        (APP_ORIGIN, APP_ORIGIN + ":443"),
        # A browser writes an IPv6 address compressed, in lower case.
        ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ("https://[2001:DB8:0::7]", "https://[2001:db8::7]"),
    ],
)
async def test_an_origin_written_another_way_is_the_same(
    make_client, make_settings, configured, sent
):
    # A browser sends https://host, never https://host:443: an origin configured with
    # its scheme's default port must still get CORS, not stay off without a word.
    http = await make_client(make_settings(cors_origins=(configured,)))
    preflight = await http.options(
        "/v1/me", headers={"Origin": sent, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == sent
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    response = await http.get("/v1/me", headers={"Origin": sent})
    assert response.headers["Access-Control-Allow-Origin"] == sent


async def test_another_port_is_another_origin(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN + ":8443", "http://h:443")))
    for sent in (APP_ORIGIN, "http://h"):
        response = await http.get("/health", headers={"Origin": sent})
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_other_origins_get_no_cors(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN,)))
    response = await http.get("/health", headers={"Origin": "https://evil.example.com"})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers
    assert "Origin" in response.headers["Vary"]
    preflight = await http.options(
        "/v1/me",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


async def test_preflight_needs_no_credentials(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN,)))
    response = await http.options(
        "/v1/me",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-stainless-os",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, x-stainless-os"
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert_security_headers(response)


async def test_preflight_for_an_unknown_path_is_a_404(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN,)))
    response = await http.options(
        "/no/such/route", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    await assert_error(response, 404)


async def test_preflight_for_a_method_the_route_lacks(make_client, make_settings):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN,)))
    response = await http.options(
        "/v1/me", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "DELETE"}
    )
    assert response.status == 204
    assert "Access-Control-Allow-Methods" not in response.headers


def parsed_answer(answer: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    return (
        int(status_line.split()[1]),
        CIMultiDict(line.split(": ", 1) for line in header_lines),
        body,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # RFC 6585: a header too large is a 431; RFC 9112: a target too long MUST be a 414.
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nX-Long: "
            + b"a" * 9000
            + b"\r\nContent-Length: 2\r\n\r\n{}",
            431,
        ),
        (b"GET /v1/models?" + b"a" * 17000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n", 414),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nContent-Length: ten\r\n\r\n{}",
            400,
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked"
            b"\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
        ),
        (b"NOT-HTTP AT ALL\r\n\r\n", 400),
    ],
    ids=["header-too-long", "url-too-long", "bad-content-length", "bad-chunk-size", "not-http"],
)
async def test_a_request_aiohttp_cannot_parse_gets_relays_error_shape(http, raw, expected):
    answer = await raw_exchange(http, raw)  # returns once relay closed the connection
    status, headers, body = parsed_answer(answer)
    assert status == expected
    # The client spoke HTTP/1.1, and relay does: aiohttp answered these in HTTP/1.0.
    assert answer.startswith(b"HTTP/1.1 ") and headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] == "relay" and headers["X-Content-Type-Options"] == "nosniff"
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "malformed_request")
    # What aiohttp would have quoted back is not in the answer.
    assert b"aaaa" not in body and b"ten" not in body and b"zz" not in body


@pytest.mark.parametrize(
    "rest",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}}}\r\n0\r\n\r\n"],
    ids=["bad-chunk-size", "chunk-longer-than-said"],
)
async def test_a_chunked_body_that_turns_malformed_is_a_400_not_a_hang(http, caplog, rest):
    # The head and a first good chunk come first, so the handler is reading the body
    # when the bad framing arrives: aiohttp's C parser left that reader waiting.
    _, token = await client_with_token(http)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'5\r\n{"mod\r\n'
    )
    answer = await raw_exchange(http, head, rest)  # returns once relay closed the connection
    status, headers, body = parsed_answer(answer)
    assert answer.startswith(b"HTTP/1.1 ") and answer.count(b"\r\n\r\n") == 1  # one answer
    assert status == 400 and headers["Content-Type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "malformed_request")
    assert error["message"] == "The request body is not valid HTTP/1.1 chunked framing."
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_body_in_a_transfer_coding_relay_does_not_decode_is_a_501(http):
    # aiohttp decodes chunked only: relay would read gzip's bytes as the JSON sent.
    _, token = await client_with_token(http)
    body = gzip.compress(b'{"model":"gpt-sim","messages":[{"role":"user","content":"hi"}]}')
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    status, headers, body = parsed_answer(await raw_exchange(http, raw))
    assert status == 501 and headers["x-should-retry"] == "false"
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "unsupported_transfer_coding",
    )


def test_the_connection_handler_answers_a_timeout_and_a_crash_in_relays_shape():
    assert unparsed_error(504, None).status == 504
    crash = unparsed_error(500, RuntimeError("boom"))
    assert (crash.status, crash.type, crash.message) == (500, "server_error", "Internal error.")


@pytest.mark.parametrize(
    "path",
    ["/v1/me", "/v1/models", "/v1/conversations", "/v1/history", "/v1/history/search?q=hi"],
)
async def test_answers_to_credentialed_requests_are_not_stored_by_any_cache(http, path):
    # A browser's or a mobile app's own HTTP cache would otherwise keep transcripts on
    # disk, past a DELETE of the conversation (RFC 9111 binds only shared caches).
    _, token = await client_with_token(http)
    response = await http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    refused = await http.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert refused.status == 401 and refused.headers["Cache-Control"] == "no-store"
    # What is public and the same for everyone may be kept as before.
    assert "no-store" not in (await http.get("/openapi.json")).headers["Cache-Control"]


@pytest.mark.parametrize("asked", [None, "authorization,,content-type"])
async def test_a_preflight_naming_no_headers_or_malformed_ones_is_granted_relays_own(
    make_client, make_settings, asked
):
    http = await make_client(make_settings(cors_origins=(APP_ORIGIN,)))
    headers = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    response = await http.options("/v1/chat/completions", headers=headers)
    assert response.status == 204
    granted = {
        name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type", "relay-conversation-id"} <= granted
