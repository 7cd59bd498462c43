"""Everything relay logs, even at DEBUG, is free of keys, tokens and request bodies."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg2
import pytest

from relay.logs import JsonFormatter, TextFormatter, setup_logging
from tests.api_calls import ADMIN, bearer, raw_exchange
from tests.conftest import ADMIN_TOKEN, JWT_SECRET

CANARY = "canary-body-text-7c1e"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_no_secret_reaches_the_logs(http, captured):
    response = await http.post(
        "/admin/clients",
        json={"name": "logged client", "metadata": {"note": CANARY}},
        headers=ADMIN,
    )
    client = await response.json()
    api_key = client["api_key"]
    secret = api_key.split("_")[2]

    response = await http.post("/auth/token", json={"api_key": api_key})
    token = (await response.json())["access_token"]
    assert (await http.get("/v1/me", headers=bearer(token))).status == 200
    assert (await http.get("/admin/clients", headers=ADMIN)).status == 200
    response = await http.patch(
        f"/admin/clients/{client['id']}", json={"metadata": {"note": CANARY + "2"}}, headers=ADMIN
    )
    assert response.status == 200
    response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
    new_key = (await response.json())["api_key"]
    response = await http.post("/auth/token", json={"api_key": api_key})  # refused: old key
    assert response.status == 401
    response = await http.post("/auth/token", json={"api_key": api_key[:-4] + "dead"})
    assert response.status == 401
    assert (await http.get("/v1/me", headers=bearer(token))).status == 401  # revoked token
    assert (await http.get("/v1/me", headers=bearer(token + "x"))).status == 401  # bad one
    response = await http.post(
        "/auth/token",
        data=b'{"api_key": "' + CANARY.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400

    text = captured.getvalue()
    assert text, "nothing was logged"
    forbidden = {
        "api key": api_key,
        "key secret": secret,
        "new api key": new_key,
        "new key secret": new_key.split("_")[2],
        "access token": token,
        "token signature": token.split(".")[2],
        "token payload": token.split(".")[1],
        "admin token": ADMIN_TOKEN,
        "jwt secret": JWT_SECRET,
        "request body": CANARY,
    }
    leaked = {what for what, value in forbidden.items() if value in text}
    assert not leaked, leaked


@pytest.mark.parametrize(
    "raw",
    [
        # A chunk size that is not hex: aiohttp's parser quotes what follows it.
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n"
        b'Content-Type: application/json\r\n\r\nzz\r\n{"content":"' + CANARY.encode() + b'"}\r\n',
        # A control character in a header: the parser quotes the header line.
        b"GET /v1/me HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer "
        + CANARY.encode()
        + b"\x7f\r\n\r\n",
    ],
    ids=["body", "header"],
)
async def test_a_request_aiohttp_cannot_parse_is_logged_without_its_bytes(http, raw):
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("DEBUG", "json", stream)
    try:
        answer = await raw_exchange(http, raw)
        await asyncio.sleep(0.05)  # lines of a loop turn are written at its end
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert CANARY.encode() not in answer  # nor quoted back in the answer
    text = stream.getvalue()
    assert CANARY not in text
    [line] = [line for line in lines(stream) if line["logger"] == "aiohttp.server"]
    assert line["msg"] == "malformed request" and line["level"] == "warning"


async def test_access_line_has_ids_route_status_and_timing(http, captured):
    response = await http.post("/admin/clients", json={"name": "timed"}, headers=ADMIN)
    client = await response.json()
    response = await http.post(
        "/auth/token", json={"api_key": client["api_key"]}, headers={"X-Request-Id": "swap-1"}
    )
    token = (await response.json())["access_token"]
    await http.get("/v1/me", headers={**bearer(token), "X-Request-Id": "me-call-1"})
    await http.get(f"/admin/clients/{client['id']}", headers={**ADMIN, "X-Request-Id": "get-1"})
    await http.get("/nowhere", headers={"X-Request-Id": "lost-1"})

    access = {
        line["request_id"]: line for line in lines(captured) if line["logger"] == "relay.access"
    }

    me = access["me-call-1"]
    assert me["client_id"] == client["id"]
    assert me["route"] == "/v1/me"
    assert me["method"] == "GET"
    assert me["status"] == 200
    assert isinstance(me["duration_ms"], int | float) and me["duration_ms"] >= 0
    assert 0 <= me["ttfb_ms"] <= me["duration_ms"]  # a whole answer has a first byte too

    exchange = access["swap-1"]
    assert exchange["client_id"] == client["id"]
    assert exchange["route"] == "/auth/token" and exchange["status"] == 200

    admin = access["get-1"]
    assert admin["route"] == "/admin/clients/{client_id}"  # the pattern, not the path
    assert admin["client_id"] is None
    assert admin["status"] == 200

    lost = access["lost-1"]
    assert lost["status"] == 404
    assert "/nowhere" not in lost["route"]


def test_log_lines_are_json_with_level_and_logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("relay.test")
    log.addHandler(handler)
    try:
        log.warning("something", extra={"request_id": "r1", "status": 503})
    finally:
        log.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    assert line["level"] == "warning"
    assert line["logger"] == "relay.test"
    assert line["msg"] == "something"
    assert line["request_id"] == "r1" and line["status"] == 503
    assert line["ts"].endswith("Z")


async def test_bytes_in_counts_a_chunked_body_as_received(http, captured):
    body = orjson.dumps({"name": "chunked " + "x" * 100})

    async def chunks():  # no Content-Length: aiohttp sends it chunked
        yield body[:50]
        yield body[50:]

    headers = {**ADMIN, "Content-Type": "application/json", "X-Request-Id": "chunked-1"}
    response = await http.post("/admin/clients", data=chunks(), headers=headers)
    assert response.status == 201
    [line] = [line for line in lines(captured) if line.get("request_id") == "chunked-1"]
    assert line["bytes_in"] == len(body)


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_a_logged_exception_is_named_by_its_class_not_its_message(database_url, formatter):
    # PostgreSQL quotes the row a constraint refused, a message's content included; a
    # bug that let such an error reach `log.exception` ("unhandled error") put the
    # prompt in the log. The traceback keeps its frames and each exception's class.
    def insert_refused_row() -> None:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE said (content text CHECK (content = ''))")
            cur.execute("INSERT INTO said VALUES (%s)", (CANARY,))

    try:
        try:
            insert_refused_row()
        except psycopg2.Error as error:
            raise RuntimeError(f"could not store {CANARY}") from error
    except RuntimeError:
        record = logging.LogRecord("relay.test", logging.ERROR, "", 0, "failed", (), sys.exc_info())
    text = formatter().format(record)
    assert CANARY not in text
    assert "psycopg2.errors.CheckViolation" in text and "RuntimeError" in text
    assert "direct cause" in text and "insert_refused_row" in text
