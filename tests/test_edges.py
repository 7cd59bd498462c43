"""Requests relay cannot serve still get the error shape, and every answer has a request id."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from tests.api_calls import ADMIN, assert_error, bearer, client_with_token

MAX_BODY = 2048
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
async def small(make_client, make_settings):
    """relay with a small body limit."""
    return await make_client(make_settings(max_body_bytes=MAX_BODY))


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/admin/nope", "/auth/token/x", "/"])
async def test_unknown_route_is_404(http, path):
    error = await assert_error(await http.get(path), 404)
    assert error["code"] == "unknown_url"


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("GET", "/auth/token", {"POST"}),
        ("DELETE", "/auth/token", {"POST"}),
        ("POST", "/health", {"GET", "HEAD"}),
        ("PUT", "/admin/clients", {"GET", "HEAD", "POST"}),
        ("POST", "/v1/me", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_405_with_allow(http, method, path, allowed):
    response = await http.request(method, path)
    await assert_error(response, 405, "method_not_allowed")
    # Allow names every method the path answers, OPTIONS included; so does OPTIONS itself.
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == allowed | {"OPTIONS"}
    options = await http.options(path)
    assert options.headers["Allow"] == response.headers["Allow"]


async def test_options_asterisk_names_every_method_the_server_answers(http):
    reader, writer = await asyncio.open_connection(http.host, http.port)
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 204 No Content"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert set(fields["Allow"].split(", ")) == {"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST"}
    assert body == b""


@pytest.mark.parametrize("body", [b"{", b"{'api_key': 1}", b"", b"\xff\xfe", b"nul\x00l"])
async def test_malformed_json_is_400(http, body):
    response = await http.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 400)


@pytest.mark.parametrize("body", [b"[]", b'["api_key"]', b'"rk_x"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_400(http, body):
    response = await http.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 400)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat"])
async def test_json_nested_as_deep_as_the_body_limit_allows_is_400(http, path):
    # Two million levels in 4 MB (RELAY_MAX_BODY_BYTES' default): orjson before 3.9.15
    # (CVE-2024-27454) recursed without a limit and took relay's process down with it.
    depth = 2_000_000
    _, token = await client_with_token(http)
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = await http.post(path, data=b"[" * depth + b"]" * depth, headers=headers)
    await assert_error(response, 400, "invalid_request")
    assert (await http.get("/v1/models", headers=headers)).status == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_non_json_content_type_is_415(http, content_type):
    response = await http.post(
        "/auth/token", data=b'{"api_key": "x"}', headers={"Content-Type": content_type}
    )
    await assert_error(response, 415)


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8", "US-ASCII"])
async def test_json_with_a_utf8_charset_is_accepted(http, charset):
    response = await http.post(
        "/auth/token",
        data=b'{"api_key": "rk_nope"}',
        headers={"Content-Type": f"application/json; charset={charset}"},
    )
    await assert_error(response, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "charset,body",
    [
        ("utf-16", '{"api_key": "rk_nope"}'.encode("utf-16")),
        ("UTF-16LE", '{"api_key": "rk_nope"}'.encode("utf-16-le")),
        ("iso-8859-1", '{"api_key": "rk_caf\u00e9"}'.encode("latin-1")),
    ],
    ids=["utf-16", "utf-16le", "latin-1"],
)
async def test_json_in_another_charset_is_refused_naming_it(http, charset, body):
    # JSON between systems is UTF-8 (RFC 8259 section 8.1): the body was refused as
    # "not valid JSON", which did not say why.
    response = await http.post(
        "/auth/token", data=body, headers={"Content-Type": f"application/json; charset={charset}"}
    )
    error = await assert_error(response, 415, "unsupported_media_type")
    assert f"charset={charset}" in error["message"] and "UTF-8" in error["message"]


@pytest.mark.parametrize(
    "encoding,named",
    [
        ("utf-16", "UTF-16"),  # with its byte order mark
        ("utf-16-be", "UTF-16BE"),  # without one: told by its NULs (RFC 4627 section 3)
        ("utf-16-le", "UTF-16LE"),
        ("utf-32", "UTF-32"),
        ("utf-32-be", "UTF-32BE"),
        ("utf-32-le", "UTF-32LE"),
    ],
)
async def test_json_in_utf16_or_utf32_without_a_charset_is_refused_naming_it(http, encoding, named):
    # As with a charset said (above): it was refused as "not valid JSON", saying not why.
    body = '{"api_key": "rk_nope"}'.encode(encoding)
    response = await http.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    error = await assert_error(response, 415, "unsupported_media_type")
    assert named in error["message"] and "UTF-8 only" in error["message"]


async def test_body_over_the_limit_with_content_length_is_413(small):
    body = b'{"api_key": "' + b"x" * (MAX_BODY * 2) + b'"}'
    response = await small.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 413)


async def test_chunked_body_over_the_limit_is_413(small):
    async def chunks():
        yield b'{"api_key": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}'

    response = await small.post(
        "/admin/clients", data=chunks(), headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    await assert_error(response, 413)


async def test_a_body_that_trickles_in_is_408(http, monkeypatch):
    monkeypatch.setattr("relay.api.body.BODY_SECONDS", 0.3)

    async def slowly() -> AsyncIterator[bytes]:
        yield b'{"name":'
        await asyncio.sleep(1)
        yield b'"late"}'

    response = await http.post(
        "/admin/clients",
        data=slowly(),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    await assert_error(response, 408, "request_timeout")


async def test_a_body_just_under_the_limit_is_read(small):
    padding = MAX_BODY - len(b'{"api_key": ""}') - 1
    body = b'{"api_key": "' + b"x" * padding + b'"}'
    response = await small.post(
        "/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 401, "invalid_api_key")


async def test_request_id_is_kept_when_sane(http):
    response = await http.get("/health", headers={"X-Request-Id": "mobile-42.abc:7"})
    assert response.headers["X-Request-Id"] == "mobile-42.abc:7"


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "semi;colon", "ünïcode"])
async def test_request_id_is_replaced_when_not_sane(http, given):
    response = await http.get("/health", headers={"X-Request-Id": given})
    assert GENERATED_ID.match(response.headers["X-Request-Id"])


async def test_request_id_is_generated_and_unique(http):
    first = (await http.get("/health")).headers["X-Request-Id"]
    second = (await http.get("/health")).headers["X-Request-Id"]
    assert GENERATED_ID.match(first) and GENERATED_ID.match(second)
    assert first != second


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/nope", 404),
        ("DELETE", "/auth/token", 405),
        ("GET", "/v1/me", 401),
        ("GET", "/admin/clients", 401),
        ("POST", "/auth/token", 415),
    ],
)
async def test_errors_carry_the_request_id(http, method, path, status):
    response = await http.request(method, path, headers={"X-Request-Id": "trace-me"})
    await assert_error(response, status)
    assert response.headers["X-Request-Id"] == "trace-me"

    response = await http.request(method, path)
    await assert_error(response, status)
    assert GENERATED_ID.match(response.headers["X-Request-Id"])


async def test_too_large_carries_the_request_id(small):
    response = await small.post(
        "/auth/token",
        data=b"x" * (MAX_BODY * 2),
        headers={"Content-Type": "application/json", "X-Request-Id": "big-one"},
    )
    await assert_error(response, 413)
    assert response.headers["X-Request-Id"] == "big-one"


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/history?limit=1&limit=500", "limit"),
        ("/v1/history?conversation_id=a&conversation_id=b", "conversation_id"),
        ("/v1/history?wait=0&wait=30", "wait"),
        ("/v1/history/search?q=cats&q=dogs", "q"),
        ("/v1/conversations?after=x&after=y", "after"),
        ("/v1/signature/0123456789abcdef0123456789abcdef?signing_algo=ed25519&signing_algo=x",
         "signing_algo"),
        (f"/v1/attestation/report?nonce={'0' * 64}&nonce={'1' * 64}", "nonce"),
        ("/admin/clients?after=x&after=y", "after"),
        ("/admin/receipts?limit=1&limit=2", "limit"),
    ],
)  # fmt: skip
async def test_a_query_parameter_given_twice_is_refused_not_guessed(http, path, param):
    token = (await client_with_token(http))[1]
    headers = ADMIN if path.startswith("/admin") else bearer(token)
    error = await assert_error(await http.get(path, headers=headers), 400)
    assert error["param"] == param and "given 2 times" in error["message"]


@pytest.mark.parametrize(
    "given", ["+5", "5_0", "%205", "%D9%A5", "5.0", "1e2", "99999999999999999999"]
)
async def test_a_number_in_the_query_is_plain_digits(http, given):
    # int() reads "+5", "5_0", " 5" and other scripts' digits; a proxy or cache does not.
    token = (await client_with_token(http))[1]
    error = await assert_error(
        await http.get(f"/v1/history?limit={given}", headers=bearer(token)), 400
    )
    assert error["param"] == "limit"


@pytest.mark.parametrize(
    "path,api",
    [
        ("/v1/responses", "/v1/responses"),
        ("/v1/responses/resp_123", "/v1/responses"),
        ("/v1/completions", "/v1/completions"),
        ("/v1/embeddings", "/v1/embeddings"),
    ],
)
async def test_another_openai_api_is_a_404_naming_chat_completions(http, path, api):
    """The Vercel AI SDK's `openai(model)` calls Responses: its user is told what to use."""
    token = (await client_with_token(http))[1]
    response = await http.post(
        path, json={"model": "sim-small", "input": "hi"}, headers=bearer(token)
    )
    error = await assert_error(response, 404, "unknown_url")
    assert f"not {api};" in error["message"]
    assert "/v1/chat/completions" in error["message"]


async def test_a_path_that_only_starts_like_another_api_is_a_plain_404(http):
    error = await assert_error(await http.post("/v1/completionsx"), 404, "unknown_url")
    assert error["message"] == "No such endpoint."
